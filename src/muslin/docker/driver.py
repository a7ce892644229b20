"""Docker's NetworkDriver on Muslin's control layer.

Docker NetworkID -> Muslin network `docker-<id12>` (or `-o muslin.network=NAME`, which
joins an existing Muslin network of that name). EndpointID -> Muslin endpoint with both
veth ends on the host (Docker moves the peer into the container at Join).

Records (`docker/networks/<NetworkID>`, `docker/endpoints/<EndpointID>`) let every
handler be idempotent and let muslind find orphans after Docker lost track of them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable

from muslin.docker import clusterpool as CP
from muslin.docker import options as O
from muslin.drivers.base import get_driver
from muslin.docker import ports as P
from muslin.docker.types import (
    CapabilitiesResponse, CreateEndpointRequest, CreateEndpointResponse, CreateNetworkRequest,
    EndpointInterface, EndpointRequest, JoinRequest, JoinResponse, NetworkRequest, OperInfoResponse,
    ProgramExternalConnectivityRequest, port_bindings,
)
from muslin.model import keys
from muslin.model.errors import Conflict, Invalid, NotFound, Unavailable
from muslin.docker.ipam import check_host_routes
from muslin.model.types import AttachRequest, IPNetwork, Network

log = logging.getLogger("muslin.docker.driver")

NETS = keys.DOCKER_NETWORKS
EPS = keys.DOCKER_ENDPOINTS


class DockerDriver:
    """Handlers of the NetworkDriver methods on a `Muslin` control object."""

    def __init__(self, muslin: Any, link_exists: Callable[[str], bool] | None = None,
                 port_free: Callable[[str, str, int], bool] | None = None,
                 on_networks_changed: Callable[[], None] = lambda: None,
                 host_routes: Callable[[], Iterable[IPNetwork]] | None = None, names: Any = None) -> None:
        self.m = muslin
        self.store = muslin.store
        self.link_exists = link_exists
        self.port_free = port_free or muslin.port_free
        self.on_networks_changed = on_networks_changed
        self.host_routes = host_routes or muslin.host_routes
        self.lock = threading.RLock()
        self.names = names  # docker/names.py: container names and aliases, asked of dockerd after Join

    # ------------------------------------------------------------------ records
    def _net_rec(self, network_id: str) -> dict | None:
        kv = self.store.get(NETS + network_id)
        return kv.value if kv else None

    def _ep_rec(self, endpoint_id: str) -> dict | None:
        kv = self.store.get(EPS + endpoint_id)
        return kv.value if kv else None

    def _network_name(self, network_id: str) -> str:
        rec = self._net_rec(network_id)
        if rec is None:
            raise NotFound(f"Docker network {network_id[:12]} is unknown to Muslin (created before muslind's "
                           "state was reset?)")
        return rec["name"]

    def docker_networks(self) -> dict[str, dict]:
        return {kv.key[len(NETS):]: kv.value for kv in self.store.list(NETS)}

    def bridges(self) -> list[str]:
        """Bridges of the Muslin networks that Docker networks use (for DOCKER-USER)."""
        out = []
        for rec in self.docker_networks().values():
            net = self.m.find_network(rec["name"])
            if net is not None and get_driver(net.driver).bridged and net.bridge and net.bridge not in out:
                out.append(net.bridge)
        return out

    # ------------------------------------------------------------------ capabilities
    def get_capabilities(self) -> CapabilitiesResponse:
        return CapabilitiesResponse("local", "local")

    # ------------------------------------------------------------------ networks
    def create_network(self, req: CreateNetworkRequest) -> dict:
        opts = O.parse_options(req.generic)
        with self.lock:
            rec = self._net_rec(req.network_id)
            if rec is not None:
                return {}  # a retry
            name = opts.network or O.default_name(req.network_id)
            wanted = O.build_network(name, req, opts)
            existing = self.m.find_network(name)
            joined = False
            if existing is not None:
                if dict(existing.labels).get("docker.network_id") == req.network_id:
                    pass  # we made it; the record write was lost
                elif opts.network:
                    self._check_join(existing, wanted, opts)
                    joined = True
                else:
                    raise Conflict(f"Muslin network {name!r} already exists")
            else:
                ours = [s for n in self.m.list_networks() for s in n.subnets]
                routes = list(self.host_routes())
                for s in wanted.subnets:
                    check_host_routes(s, routes, ours)
                self.m.create_network(wanted)
            rec = {"name": name, "joined": joined}
            if joined:  # a CNI network goes with its last CNI endpoint; Docker may bring it back
                rec["spec"] = existing.to_dict()  # type: ignore[union-attr]
            self.store.put(NETS + req.network_id, rec)
        log.info("network %s -> %s%s", req.network_id[:12], name, " (joined)" if joined else "")
        self.on_networks_changed()
        return {}

    def _check_join(self, existing: Network, wanted: Network, opts: O.NetworkOptions) -> None:
        if CP.cidr_of(existing) is not None:
            CP.check_join(existing, wanted)  # a cluster network's side: Docker's pool is the CIDR
        have = set(existing.subnets) | set(CP.cidrs_of(existing))
        for s in wanted.subnets:
            if s not in have:
                shown = ", ".join(str(x) for x in existing.subnets) or "none"
                raise Conflict(f"Muslin network {existing.name!r} has subnet(s) {shown}; Docker asked for {s} "
                               f"(pass --subnet matching it)")
        if wanted.internal and not existing.internal:  # a join takes the network's settings: this one would be lost
            raise Invalid(f"--internal cannot be set when joining the existing Muslin network {existing.name!r}: "
                          f"it is not internal")
        extra = [k for k in opts.given if k != "muslin.network"]
        if extra:
            raise Invalid(f"option {extra[0]} cannot be set when joining the existing Muslin network "
                          f"{existing.name!r}")
        gws = {g.network: g.ip for g in existing.gateways()}
        for rs in wanted.range_sets:
            for r in rs:
                if r.gateway is not None and gws.get(r.subnet) not in (None, r.gateway):
                    raise Conflict(f"gateway {r.gateway} differs from {gws[r.subnet]}, the gateway of "
                                   f"Muslin network {existing.name!r}")

    def delete_network(self, req: NetworkRequest) -> dict:
        with self.lock:
            rec = self._net_rec(req.network_id)
            if rec is None:
                return {}
            name = rec["name"]
            sharers = [nid for nid, r in self.docker_networks().items()
                       if r.get("name") == name and nid != req.network_id]
            if not rec.get("joined") and sharers:
                # another Docker network joined this Muslin network: it inherits ownership
                other = self._net_rec(sharers[0]) or {}
                self.store.put(NETS + sharers[0], {**other, "joined": False})
            elif not sharers:
                if not rec.get("joined"):
                    for kv in self.store.list(EPS):  # Docker forgot endpoints? they go with the network
                        if kv.value.get("network_id") == req.network_id:
                            self._detach(name, kv.key[len(EPS):])
                net = self.m.find_network(name)
                if net is not None and (not rec.get("joined") or net.origin == "cni"):
                    # removed now when unused, else handed to its CNI endpoints and removed with the last
                    self.m.hand_over(name, "cni")
            self.store.delete(NETS + req.network_id)
        log.info("network %s (%s) deleted", req.network_id[:12], name)
        self.on_networks_changed()
        return {}

    # ------------------------------------------------------------------ endpoints
    def create_endpoint(self, req: CreateEndpointRequest) -> CreateEndpointResponse:
        addrs = req.interface.addresses()
        if not addrs:
            raise Invalid("Docker assigned no address to the endpoint (is --ipam-driver giving none?)")
        mac = req.interface.mac_address
        with self.lock:
            name = self._network_name(req.network_id)
            net = self.m.find_network(name)
            if net is None:
                spec = (self._net_rec(req.network_id) or {}).get("spec")
                if not spec:
                    raise NotFound(f"Muslin network {name!r} of Docker network {req.network_id[:12]} is gone")
                if CP.cidr_of(Network.from_dict(spec)) is not None:  # only its cluster agent makes it
                    raise Unavailable(f"cluster network {name!r} has no side on this host now (its agent left?)")
                net = self.m.ensure_network(Network.from_dict(spec))  # the joined network was removed by CNI
            for a in addrs:
                if not any(a.ip in s for s in net.subnets):
                    raise Invalid(f"address {a} is outside the subnets of network {name!r}")
            ep = self.m.find_endpoint(name, req.endpoint_id)
            if ep is None:
                ep = self.m.attach(AttachRequest(
                    network=name, endpoint_id=req.endpoint_id, container_id=req.endpoint_id,
                    netns="", mac=mac, addresses=addrs, owner=keys.docker_owner(req.endpoint_id)))
            peer = ep.peer
            self.store.put(EPS + req.endpoint_id, {
                "network_id": req.network_id, "network": name, "peer": peer,
                "host_ifname": ep.host_ifname, "mac": ep.mac, "sandbox_key": "", "bindings": None,
            })
        log.info("endpoint %s on %s: %s via %s", req.endpoint_id[:12], name,
                 ",".join(str(a) for a in addrs), ep.host_ifname)
        if mac or not ep.mac:
            return CreateEndpointResponse(None)
        return CreateEndpointResponse(EndpointInterface(mac_address=ep.mac))

    def _endpoint(self, req_network_id: str, endpoint_id: str) -> dict:
        rec = self._ep_rec(endpoint_id)
        if rec is None:
            raise NotFound(f"endpoint {endpoint_id[:12]} does not exist on network {req_network_id[:12]}")
        return rec

    def join(self, req: JoinRequest) -> JoinResponse:
        with self.lock:
            rec = self._endpoint(req.network_id, req.endpoint_id)
            net = self.m.get_network(rec["network"])
            if not rec.get("peer"):
                raise Invalid(f"network {net.name!r} (driver {net.driver}) has no interface to hand to Docker")
            if rec.get("sandbox_key") != req.sandbox_key:
                self.store.put(EPS + req.endpoint_id, {**rec, "sandbox_key": req.sandbox_key})
        if self.names is not None:
            self.names.lookup_later(req.network_id, req.endpoint_id, rec["network"])
        gw4 = gw6 = ""
        if not net.internal and net.is_default_gateway:
            for gw in net.gateways():
                if gw.version == 4 and not gw4:
                    gw4 = str(gw.ip)
                elif gw.version == 6 and not gw6:
                    gw6 = str(gw.ip)
        return JoinResponse(src_name=rec["peer"], dst_prefix="eth", gateway=gw4, gateway_ipv6=gw6,
                            disable_gateway_service=True)

    def leave(self, req: EndpointRequest) -> dict:
        with self.lock:
            rec = self._ep_rec(req.endpoint_id)
            if rec is None:
                return {}
            if rec.get("bindings"):
                self._set_ports(rec, req.endpoint_id, None)
            if rec.get("sandbox_key"):
                self.store.put(EPS + req.endpoint_id, {**rec, "sandbox_key": "", "bindings": None})
        return {}

    def delete_endpoint(self, req: EndpointRequest) -> dict:
        with self.lock:
            rec = self._ep_rec(req.endpoint_id)
            if rec is not None:
                name = rec["network"]
            else:
                nrec = self._net_rec(req.network_id)
                if nrec is None:
                    return {}
                name = nrec["name"]
            self._detach(name, req.endpoint_id)
        return {}

    def _detach(self, name: str, endpoint_id: str) -> None:
        self.m.detach(name, endpoint_id, owner=keys.docker_owner(endpoint_id))
        self.store.delete(EPS + endpoint_id)
        log.info("endpoint %s on %s deleted", endpoint_id[:12], name)

    def endpoint_oper_info(self, req: EndpointRequest) -> OperInfoResponse:
        rec = self._ep_rec(req.endpoint_id)
        if rec is None:
            return OperInfoResponse({})
        value: dict[str, Any] = {"muslin.network": rec["network"], "muslin.host_ifname": rec["host_ifname"]}
        if rec.get("ports"):
            value["muslin.ports"] = rec["ports"]
        return OperInfoResponse(value)

    # ------------------------------------------------------------------ ports
    def program_external_connectivity(self, req: ProgramExternalConnectivityRequest) -> dict:
        bindings = port_bindings(req.options)
        with self.lock:
            rec = self._endpoint(req.network_id, req.endpoint_id)
            net = self.m.get_network(rec["network"])
            if net.internal or not get_driver(net.driver).bridged:
                return {}
            key = [b.__dict__ for b in bindings]
            if rec.get("bindings") == key:
                return {}  # a retry: already programmed
            self._set_ports(rec, req.endpoint_id, bindings)
        return {}

    def revoke_external_connectivity(self, req: EndpointRequest) -> dict:
        with self.lock:
            rec = self._ep_rec(req.endpoint_id)
            if rec is None or not rec.get("bindings"):
                return {}
            self._set_ports(rec, req.endpoint_id, None)
        return {}

    def _set_ports(self, rec: dict, endpoint_id: str, bindings) -> None:
        name = rec["network"]
        if bindings:
            taken = [p for ep in self.m.endpoints() if ep.endpoint_id != endpoint_id for p in ep.ports]
            mappings = P.resolve(bindings, taken, self.port_free, start_hint=int(endpoint_id[:6], 16)
                                 if all(c in "0123456789abcdef" for c in endpoint_id[:6]) else 0)
        else:
            mappings = ()
        self.m.set_ports(name, endpoint_id, tuple(mappings))
        self.store.put(EPS + endpoint_id, {
            **rec, "bindings": [b.__dict__ for b in bindings] if bindings else None,
            "ports": [m.to_dict() for m in mappings],
        })
        if mappings:
            log.info("endpoint %s publishes %s", endpoint_id[:12], ", ".join(
                f"{m.host_ip or '*'}:{m.host_port}->{m.container_port}/{m.protocol}" for m in mappings))

    # ------------------------------------------------------------------ names
    def named(self, network: str, endpoint_id: str, who: dict[str, Any]) -> None:
        """dockerd told who the endpoint's container is: its name, aliases and labels go on the endpoint."""
        try:
            self.m.set_identity(network, endpoint_id, name=who["name"], aliases=who["aliases"],
                                set_labels=who["labels"])
            log.info("endpoint %s is container %s%s", endpoint_id[:12], who["name"] or who["container"][:12],
                     f" (aliases {', '.join(who['aliases'])})" if who["aliases"] else "")
        except NotFound:
            pass  # it left meanwhile

    def fill_names(self) -> None:
        """Look up the joined endpoints that have no name yet (made before muslind restarted, say)."""
        if self.names is None:
            return
        for kv in self.store.list(EPS):
            rec, eid = kv.value, kv.key[len(EPS):]
            if not rec.get("sandbox_key"):
                continue
            ep = self.m.find_endpoint(rec["network"], eid)
            if ep is not None and not ep.name:
                self.names.lookup_later(rec["network_id"], eid, rec["network"])

    # ------------------------------------------------------------------ orphans
    def cleanup_orphans(self) -> list[str]:
        """Detach endpoints whose host interface is gone (their sandbox died without
        Leave/DeleteEndpoint, e.g. while dockerd was down). Returns their ids."""
        if self.link_exists is None:
            return []
        removed = []
        with self.lock:
            for kv in self.store.list(EPS):
                rec, eid = kv.value, kv.key[len(EPS):]
                if rec.get("host_ifname") and not self.link_exists(rec["host_ifname"]):
                    try:
                        self._detach(rec["network"], eid)
                        removed.append(eid)
                    except Exception as e:  # keep going; report one line
                        log.warning("orphan endpoint %s: cleanup failed: %s", eid[:12], e)
        for eid in removed:
            log.info("orphan endpoint %s cleaned up (its sandbox is gone)", eid[:12])
        return removed


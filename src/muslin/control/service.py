"""The use-cases every front-end calls: networks, attach, detach, check, gc.

Validate everything, then change anything; every step that fails undoes the ones
before it. The kernel work is done in the namespace this process runs in (the host).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from muslin.control.ipam import Ipam
from muslin.control.locks import flock
from muslin.dataplane.links import Host
from muslin.drivers.base import Addr, get_driver
from muslin.ipam.ranges import normalize_range, validate_range_sets
from muslin.model import names
from muslin.model.errors import Conflict, Invalid, MuslinError, NotFound
from muslin.model.types import AttachRequest, Endpoint, Network, PortMapping
from muslin.store import default_state_dir, open_store
from muslin.store.base import Store

log = logging.getLogger("muslin")
NET_PREFIX = "networks/"
EP_PREFIX = "endpoints/"


def endpoint_key(network: str, endpoint_id: str) -> str:
    return f"{EP_PREFIX}{network}/{names.store_id(endpoint_id)}"


def default_owner(network: str, endpoint_id: str) -> str:
    return f"ep/{network}/{endpoint_id}"


class Muslin:
    def __init__(self, store: Store | None = None, state_dir: str | Path | None = None) -> None:
        self.state_dir = Path(state_dir or default_state_dir())
        self.store = store if store is not None else open_store(str(self.state_dir))
        self.ipam = Ipam(self.store)

    def close(self) -> None:
        self.store.close()

    # -- helpers ---------------------------------------------------------------
    @contextmanager
    def _host(self) -> Iterator[Host]:
        host = Host()
        try:
            yield host
        finally:
            host.close()

    def _lock(self, network: str, exclusive: bool):
        return flock(self.state_dir / "locks" / f"net-{network}.lock", exclusive)

    # -- networks ----------------------------------------------------------------
    def find_network(self, name: str) -> Network | None:
        kv = self.store.get(NET_PREFIX + name)
        return Network.from_dict(kv.value) if kv else None

    def get_network(self, name: str) -> Network:
        net = self.find_network(name)
        if net is None:
            raise NotFound(f"network {name!r} does not exist")
        return net

    def list_networks(self) -> list[Network]:
        return [Network.from_dict(kv.value) for kv in self.store.list(NET_PREFIX)]

    def normalize(self, net: Network) -> Network:
        """Fill defaults and validate a network completely; no side effects."""
        names.check_name(net.name)
        driver = get_driver(net.driver)
        if net.driver == "bridge" and not net.bridge:
            net = net.evolve(bridge=names.bridge_name(net.name))
        sets = tuple(tuple(normalize_range(r) for r in rs) for rs in net.range_sets)
        validate_range_sets(sets)
        net = net.evolve(range_sets=sets)
        if driver.uses_ipam and net.driver != "macvlan" and not sets:
            raise Invalid(f"network {net.name}: give at least one subnet")
        driver.validate(net)
        return net

    def _check_conflicts(self, net: Network) -> None:
        for other in self.list_networks():
            if other.name == net.name:
                continue
            for mine in net.subnets:
                for theirs in other.subnets:
                    if mine.version == theirs.version and mine.overlaps(theirs):
                        raise Conflict(f"subnet {mine} overlaps network {other.name!r} ({theirs})")
            if net.bridge and net.bridge == other.bridge:
                raise Conflict(f"bridge {net.bridge} is already used by network {other.name!r}")

    def create_network(self, net: Network) -> Network:
        net = self.normalize(net)
        if self.find_network(net.name) is not None:
            raise Conflict(f"network {net.name!r} already exists")
        self._check_conflicts(net)
        driver = get_driver(net.driver)
        with self._lock(net.name, exclusive=True):
            self.store.put(NET_PREFIX + net.name, net.to_dict(), expect=0)
            try:
                with self._host() as host:
                    driver.setup_network(host, net)
                self.sync_firewall()
            except BaseException:
                self._remove_network_objects(net)
                raise
        self._docker_user(net, present=True)
        return net

    def ensure_network(self, net: Network) -> Network:
        """The stored network of that name if compatible, else create it (CNI)."""
        existing = self.find_network(net.name)
        if existing is None:
            try:
                return self.create_network(net)
            except Conflict:
                existing = self.find_network(net.name)
                if existing is None:
                    raise
        wanted = self.normalize(net)
        if existing.origin == "cni" and wanted.origin == "cni" and _differs(existing, wanted):
            if self.endpoints(net.name):
                raise Conflict(f"network {net.name!r} exists with a different configuration and is in use")
            self._remove_network_objects(existing)
            return self.create_network(net)
        return existing

    def delete_network(self, name: str, force: bool = False) -> None:
        net = self.find_network(name)
        if net is None:
            raise NotFound(f"network {name!r} does not exist")
        eps = self.endpoints(name)
        if eps and not force:
            raise Conflict(f"network {name!r} has {len(eps)} endpoint(s); disconnect them first")
        for ep in eps:
            self.detach(name, ep.endpoint_id)
        self._remove_network_objects(net)

    def hand_over(self, name: str, origin: str) -> None:
        """Give a network to another owner: with origin 'cni', its last CNI endpoint's DEL
        removes it (Docker deleting a network that Podman containers still use)."""
        kv = self.store.get(NET_PREFIX + name)
        if kv is None:
            return
        net = Network.from_dict(kv.value).evolve(origin=origin)
        self.store.put(NET_PREFIX + name, net.to_dict(), expect=kv.mod_revision)
        if origin == "cni":
            self._maybe_remove_cni_network(name)

    def _remove_network_objects(self, net: Network) -> None:
        with self._lock(net.name, exclusive=True):
            self._teardown(net)

    def _maybe_remove_cni_network(self, name: str) -> None:
        with self._lock(name, exclusive=True):
            net = self.find_network(name)
            if net is None or net.origin != "cni" or self._has_endpoints(name):
                return
            self._teardown(net)

    def _teardown(self, net: Network) -> None:
        """Remove a network's kernel objects, record and firewall data (caller holds its
        exclusive lock)."""
        with self._host() as host:
            get_driver(net.driver).teardown_network(host, net)
        self.store.delete(NET_PREFIX + net.name)
        self.sync_firewall()
        self._docker_user(net, present=False)

    # -- endpoints ---------------------------------------------------------------------
    def _has_endpoints(self, network: str) -> bool:
        keys = getattr(self.store, "keys", None)  # SQLite: one key, no values decoded
        prefix = f"{EP_PREFIX}{network}/"
        return bool(keys(prefix, limit=1) if keys is not None else self.store.list(prefix))

    def endpoints(self, network: str | None = None) -> list[Endpoint]:
        prefix = f"{EP_PREFIX}{network}/" if network else EP_PREFIX
        return [Endpoint.from_dict(kv.value) for kv in self.store.list(prefix)]

    def find_endpoint(self, network: str, endpoint_id: str) -> Endpoint | None:
        kv = self.store.get(endpoint_key(network, endpoint_id))
        return Endpoint.from_dict(kv.value) if kv else None

    def attach(self, req: AttachRequest) -> Endpoint:
        names.check_ifname(req.ifname)
        net = self.get_network(req.network)
        try:
            return self._attach(net, req)
        except BaseException:
            if net.origin == "cni":
                self._maybe_remove_cni_network(net.name)
            raise

    def _attach(self, net: Network, req: AttachRequest) -> Endpoint:
        driver = get_driver(net.driver)
        owner = req.owner or default_owner(net.name, req.endpoint_id)
        key = endpoint_key(net.name, req.endpoint_id)
        if self.store.get(key) is not None:
            raise Conflict(f"endpoint {req.endpoint_id} is already attached to network {net.name!r}")
        with self._lock(net.name, exclusive=False):
            net = self.get_network(net.name)  # it may have gone while we waited
            with self._host() as host:
                if not driver.network_ready(host, net):
                    driver.setup_network(host, net)
                allocated = False
                if not driver.uses_ipam:
                    addrs: list[Addr] = []
                elif req.addresses:
                    addrs = [(a, _gateway_for(net, a)) for a in req.addresses]
                else:
                    addrs = self.ipam.allocate(net.range_sets, owner, req.container_id, req.ifname, list(req.ips))
                    allocated = True
                try:
                    ep = driver.attach(host, net, req, addrs)
                    ep = replace(ep, ipam_owned=allocated, extra=tuple(sorted({**dict(ep.extra), "owner": owner}.items())))
                    try:
                        self.store.put(key, ep.to_dict(), expect=0)
                    except BaseException:
                        driver.detach(host, net, ep)
                        raise
                except BaseException:
                    if allocated:
                        self.ipam.release(owner)
                    raise
        if ep.ports:
            self._sync_firewall_or_detach(ep)
        return ep

    def _sync_firewall_or_detach(self, ep: Endpoint) -> None:
        try:
            self.sync_firewall()
        except BaseException:
            self.detach(ep.network, ep.endpoint_id)
            raise

    def set_ports(self, network: str, endpoint_id: str, ports: tuple[PortMapping, ...]) -> Endpoint:
        """Replace an endpoint's published ports (Docker publishes after Join)."""
        key = endpoint_key(network, endpoint_id)
        kv = self.store.get(key)
        if kv is None:
            raise NotFound(f"endpoint {endpoint_id} is not attached to network {network!r}")
        old = Endpoint.from_dict(kv.value)
        if old.ports == tuple(ports):
            return old  # nothing changes (Docker programs "no ports" on every connect)
        ep = replace(old, ports=tuple(ports))
        net = self.get_network(network)
        if net.driver == "bridge" and ep.host_ifname:
            with self._host() as host:
                host.set_hairpin(ep.host_ifname, net.hairpin or bool(ports))
        self.store.put(key, ep.to_dict(), expect=kv.mod_revision)
        self.sync_firewall()
        return ep

    def detach(self, network: str, endpoint_id: str, owner: str = "", netns: str = "", ifname: str = "") -> None:
        """Disconnect; idempotent. Without a record (crash, never attached), the derived
        names and `owner` still find and free what an attach may have made."""
        ep = self.find_endpoint(network, endpoint_id)
        net = self.find_network(network)
        if ep is None:
            ep = Endpoint(network=network, endpoint_id=endpoint_id, container_id="", ifname=ifname,
                          netns=netns, host_ifname=names.host_ifname(network, endpoint_id), mac="", addresses=())
        owner = dict(ep.extra).get("owner") or owner or default_owner(network, endpoint_id)
        with self._lock(network, exclusive=False):
            with self._host() as host:
                if net is not None:
                    get_driver(net.driver).detach(host, net, ep)
                elif ep.host_ifname:
                    host.delete_link(ep.host_ifname)
            if ep.ipam_owned:
                self.ipam.release(owner)
            self.store.delete(endpoint_key(network, endpoint_id))
        if ep.ports:
            self.sync_firewall()
        if net is not None and net.origin == "cni":
            self._maybe_remove_cni_network(network)

    def check(self, network: str, endpoint_id: str) -> Endpoint:
        net = self.get_network(network)
        ep = self.find_endpoint(network, endpoint_id)
        if ep is None:
            raise NotFound(f"endpoint {endpoint_id} is not attached to network {network!r}")
        with self._host() as host:
            get_driver(net.driver).check(host, net, ep)
        return ep

    def gc(self, network: str, keep: set[str]) -> list[str]:
        """Detach every endpoint of `network` whose id is not in `keep`; keep going on
        errors and raise the first one at the end."""
        removed: list[str] = []
        first: MuslinError | None = None
        for ep in self.endpoints(network):
            if ep.endpoint_id in keep:
                continue
            try:
                self.detach(network, ep.endpoint_id)
                removed.append(ep.endpoint_id)
            except MuslinError as e:
                first = first or e
        if first:
            raise first
        return removed

    # -- firewall ---------------------------------------------------------------------
    def firewall_state(self):
        from muslin.firewall.state import FirewallState, NetRule, PortRule

        nets = [n for n in self.list_networks() if n.driver == "bridge"]
        bridge_of = {n.name: n.bridge for n in nets}
        rules = tuple(NetRule(bridge=n.bridge, subnets=tuple(n.subnets), masquerade=n.masquerade and not n.internal,
                              internal=n.internal, isolate=n.isolate) for n in nets)
        ports = []
        for ep in self.endpoints():
            if not ep.ports or ep.network not in bridge_of:
                continue
            for p in ep.ports:
                for a in ep.addresses:
                    if p.host_ip and ipaddress.ip_address(p.host_ip).version != a.version:
                        continue
                    ports.append(PortRule(endpoint_id=ep.endpoint_id, protocol=p.protocol, host_ip=p.host_ip,
                                          host_port=p.host_port, container_ip=a.ip,
                                          container_port=p.container_port, bridge=bridge_of[ep.network]))
        return FirewallState(networks=rules, ports=tuple(ports))

    def _docker_user(self, net: Network, present: bool) -> None:
        """Accept rules for a bridge in Docker's DOCKER-USER chain, when Docker is there
        (see dataplane/docker_user.py). Best effort: never fails a network operation."""
        if net.driver != "bridge" or not net.bridge:
            return
        from muslin.dataplane.docker_user import DockerUserRules

        try:
            rules = DockerUserRules()
            rules.ensure(net.bridge) if present else rules.remove(net.bridge)
        except Exception as e:  # noqa: BLE001
            log.warning("DOCKER-USER rules for %s: %s", net.bridge, " ".join(str(e).split()))

    def sync_firewall(self) -> None:
        from muslin.dataplane import nft

        nft.sync(self.firewall_state(), self.state_dir / "locks")


def _differs(a: Network, b: Network) -> bool:
    da, db = a.to_dict(), b.to_dict()
    return da != db


def _gateway_for(net: Network, addr) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    for rs in net.range_sets:
        for r in rs:
            if addr.ip in r.subnet:
                return r.gateway
    return None


def from_env() -> Muslin:
    """A Muslin on the state directory named by MUSLIN_STATE_DIR (or the default)."""
    return Muslin(state_dir=os.environ.get("MUSLIN_STATE_DIR") or None)

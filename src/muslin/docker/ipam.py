"""Docker's IpamDriver on Muslin's IPAM.

Pools are persisted under `docker/pools/<PoolID>` with a refcount (identical requests
share one PoolID). Addresses live in Muslin's Ipam, keyed by subnet, so a Docker network
and a CNI network on the same subnet share one allocation table.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
from typing import Callable, Iterable

from muslin.docker.types import (
    LOCAL_SPACE, AddressSpacesResponse, IpamCapabilitiesResponse, PoolId, ReleaseAddressRequest,
    ReleasePoolRequest, RequestAddressRequest, RequestAddressResponse, RequestPoolRequest,
    RequestPoolResponse,
)
from muslin.docker import clusterpool as CP
from muslin.ipam.ranges import pick_pool
from muslin.model import keys
from muslin.model.errors import Conflict, Exhausted, Invalid, NotFound, Unavailable
from muslin.model.types import IPAddress, IPNetwork, IPRange, Network

log = logging.getLogger("muslin.docker.ipam")

POOLS = keys.DOCKER_POOLS
GW_OWNER = keys.DOCKER_GATEWAY_OWNERS
ADDR_OWNER = keys.DOCKER_ADDRESS_OWNERS
DEFAULT_V4 = ipaddress.ip_network("10.200.0.0/16")
DEFAULT_V6 = ipaddress.ip_network("fd6d:7573:6c69::/48")


def default_candidates(v6: bool) -> list[IPNetwork]:
    if v6:
        return list(DEFAULT_V6.subnets(new_prefix=64))[:4096]
    return list(DEFAULT_V4.subnets(new_prefix=24))


def check_host_routes(pool: IPNetwork, routes: Iterable[IPNetwork], ours: Iterable[IPNetwork]) -> None:
    """Conflict if pool overlaps a host route that is not one of Muslin's own subnets
    (a bridge on it would steal traffic from the host's real network)."""
    mine = set(ours)
    for r in routes:
        if r.version == pool.version and r not in mine and r.overlaps(pool):  # type: ignore[arg-type]
            raise Conflict(f"subnet {pool} overlaps the host route {r}")


class DockerIpam:
    """Handlers of the IpamDriver methods; each returns a response object or raises MuslinError."""

    def __init__(self, store, ipam, networks: Callable[[], Iterable[Network]],
                 host_routes: Callable[[], Iterable[IPNetwork]] = lambda: ()) -> None:
        self.store = store
        self.ipam = ipam
        self.networks = networks
        self.host_routes = host_routes
        self.lock = threading.RLock()

    # -------------------------------------------------------------- capabilities
    def get_capabilities(self) -> IpamCapabilitiesResponse:
        return IpamCapabilitiesResponse(requires_mac_address=False, requires_request_replay=False)

    def get_default_address_spaces(self) -> AddressSpacesResponse:
        return AddressSpacesResponse()

    # -------------------------------------------------------------- pools
    def _pools(self) -> list[tuple[PoolId, dict]]:
        out = []
        for kv in self.store.list(POOLS):
            try:
                out.append((PoolId.parse(kv.value["id"]), kv.value))
            except (Invalid, KeyError, TypeError):
                log.warning("ignoring bad pool record %s", kv.key)
        return out

    def pool_record(self, pid: PoolId) -> dict | None:
        kv = self.store.get(POOLS + pid.key())
        return kv.value if kv else None

    def request_pool(self, req: RequestPoolRequest) -> RequestPoolResponse:
        space = req.address_space or LOCAL_SPACE
        if "/" in space:
            raise Invalid(f"address space {space!r} must not contain '/'")
        if req.sub_pool and not req.pool:
            raise Invalid(f"ip-range {req.sub_pool} needs a subnet (--subnet)")
        with self.lock:
            if req.pool:
                pid = self._explicit(space, req)
            else:
                pid = self._automatic(space, req.v6)
            key = POOLS + pid.key()
            kv = self.store.get(key)
            if kv:
                rec = dict(kv.value)
                rec["refs"] = int(rec.get("refs", 1)) + 1
                self.store.put(key, rec, expect=kv.mod_revision)
            else:
                rec = {"id": str(pid), "refs": 1, "gateway": ""}
                side = CP.side_for_pool(self.networks(), pid.pool)
                if side is not None:
                    rec["cluster"] = side.name
                self.store.put(key, rec, expect=0)
            log.info("pool %s requested", pid)
            return RequestPoolResponse(str(pid), str(pid.pool), {})

    def _explicit(self, space: str, req: RequestPoolRequest) -> PoolId:
        try:
            pool = ipaddress.ip_network(req.pool, strict=False)
        except ValueError:
            raise Invalid(f"subnet {req.pool!r} is not a CIDR") from None
        if (pool.version == 6) != req.v6:
            raise Invalid(f"subnet {pool} is not an IPv{6 if req.v6 else 4} subnet")
        if pool.max_prefixlen - pool.prefixlen < 2:
            raise Invalid(f"subnet {pool} is too small: it needs at least 2 host bits")
        sub = None
        if req.sub_pool:
            try:
                sub = ipaddress.ip_network(req.sub_pool, strict=False)
            except ValueError:
                raise Invalid(f"ip-range {req.sub_pool!r} is not a CIDR") from None
            if sub.version != pool.version or not sub.subnet_of(pool):  # type: ignore[arg-type]
                raise Invalid(f"ip-range {sub} is not inside subnet {pool}")
        pid = PoolId(space, pool, sub)
        if self.pool_record(pid) is not None:
            return pid
        side = CP.side_for_pool(self.networks(), pool)
        if side is not None:  # the CIDR of a cluster network this host is in: it overlaps its own side
            if sub is not None:
                raise Invalid(f"ip-range {sub} cannot be given on cluster network {side.name!r}: "
                              f"this host's addresses come from its lease {CP.lease_of(side, pool.version)}")
            return pid
        for other, _ in self._pools():
            if other.space == space and other.pool != pool and other.pool.version == pool.version \
                    and other.pool.overlaps(pool):  # type: ignore[arg-type]
                raise Conflict(f"subnet {pool} overlaps subnet {other.pool} of another Docker network")
        ours: set[IPNetwork] = set()
        for net in self.networks():
            for cidr in CP.cidrs_of(net):
                if cidr.version == pool.version and cidr.overlaps(pool):  # type: ignore[arg-type]
                    raise Conflict(f"subnet {pool} overlaps {cidr}, the CIDR of cluster network {net.name!r} "
                                   f"(give exactly {cidr} with -o muslin.network={net.name} to join it)")
            for s in net.subnets:
                ours.add(s)
                if s != pool and s.version == pool.version and s.overlaps(pool):  # type: ignore[arg-type]
                    raise Conflict(f"subnet {pool} overlaps subnet {s} of Muslin network {net.name!r}")
        check_host_routes(pool, self.host_routes(), ours)
        return pid

    def _subnet(self, pool: IPNetwork) -> IPNetwork:
        """Where a pool's addresses live: this host's lease for a cluster CIDR, else the pool."""
        side = CP.side_for_pool(self.networks(), pool)
        if side is not None:
            return CP.lease_of(side, pool.version)
        return pool

    def _automatic(self, space: str, v6: bool) -> PoolId:
        in_use: list[IPNetwork] = [p.pool for p, _ in self._pools()]
        for net in self.networks():
            in_use.extend(net.subnets)
            in_use.extend(CP.cidrs_of(net))
        in_use.extend(self.host_routes())
        try:
            pool = pick_pool(default_candidates(v6), in_use)
        except Exhausted:
            raise Exhausted(f"no free default IPv{6 if v6 else 4} pool left in "
                            f"{DEFAULT_V6 if v6 else DEFAULT_V4}: pass --subnet") from None
        return PoolId(space, pool)

    def release_pool(self, req: ReleasePoolRequest) -> None:
        pid = PoolId.parse(req.pool_id)
        key = POOLS + pid.key()
        with self.lock:
            kv = self.store.get(key)
            if kv is None:
                return  # idempotent
            refs = int(kv.value.get("refs", 1)) - 1
            if refs > 0:
                self.store.put(key, {**kv.value, "refs": refs}, expect=kv.mod_revision)
                return
            self.store.delete(key)
            if not self._pool_in_use(pid.pool):
                gw = keys.docker_gateway_owner(pid.pool)
                self.ipam.release(gw)
            log.info("pool %s released", pid)

    def _pool_in_use(self, pool: IPNetwork) -> bool:
        return any(p.pool == pool for p, _ in self._pools())

    # -------------------------------------------------------------- addresses
    def _network_gateway(self, pool: IPNetwork) -> IPAddress | None:
        """The gateway of an existing Muslin network on exactly this subnet (joined networks)."""
        for net in self.networks():
            for gw in net.gateways():
                if gw.network == pool:
                    return gw.ip
        return None

    def request_address(self, req: RequestAddressRequest) -> RequestAddressResponse:
        asked = pid = PoolId.parse(req.pool_id)
        subnet = self._subnet(asked.pool)
        if subnet != asked.pool:  # a cluster CIDR: this host's lease stands for it
            pid = PoolId(asked.space, subnet, None)
            label = f"this host's lease {subnet} of the cluster CIDR {asked.pool}"
        else:
            label = f"the network's subnet {subnet}"
        pool = pid.pool
        want: IPAddress | None = None
        if req.address:
            try:
                want = ipaddress.ip_address(req.address.split("/")[0])
            except ValueError:
                raise Invalid(f"address {req.address!r} is not an IP address") from None
            if want.version != pool.version or want not in pool:
                raise Invalid(f"address {want} is outside {label}")
            if want == pool.network_address or (pool.version == 4 and want == pool.broadcast_address):
                raise Invalid(f"address {want} is the network or broadcast address of {pool}")
        with self.lock:
            rec = self.pool_record(asked)
            if rec is None:
                raise NotFound(f"address pool {asked} is not allocated")
            if pid != asked:
                rec = {**rec, "gateway": ""}  # the cluster side's gateway is the network's own
            elif rec.get("cluster"):
                raise Unavailable(f"cluster network {rec['cluster']!r} has no side on this host now (its agent "
                                  f"left?): no lease to give an address of {pid.pool} from")
            if req.is_gateway:
                ip = self._gateway(pid, rec, want)
            elif want is not None:
                ip = self._exact(pid, rec, want, req.options)
            else:
                ip = self._any(pid, rec, req.options)
        return RequestAddressResponse(f"{ip}/{pool.prefixlen}", {})

    def _gateway(self, pid: PoolId, rec: dict, want: IPAddress | None) -> IPAddress:
        pool = pid.pool
        existing = self._network_gateway(pool)
        if existing is not None:
            if want is not None and want != existing:
                raise Conflict(f"gateway {want} differs from {existing}, the gateway of the existing "
                               f"Muslin network on {pool}")
            ip = existing
        else:
            ip = want if want is not None else next(pool.hosts())
            owner = keys.docker_gateway_owner(pool)
            holder = self.ipam.owners(pool).get(ip)
            if holder is None:
                self.ipam.reserve(pool, ip, owner)
            elif holder != owner:
                raise Conflict(f"gateway {ip} is already in use in {pool}")
        self._set_gateway(pid, str(ip))
        return ip

    def _set_gateway(self, pid: PoolId, gw: str) -> None:
        key = POOLS + pid.key()
        kv = self.store.get(key)
        if kv and kv.value.get("gateway") != gw:
            self.store.put(key, {**kv.value, "gateway": gw}, expect=kv.mod_revision)

    def _exact(self, pid: PoolId, rec: dict, ip: IPAddress, options: dict[str, str]) -> IPAddress:
        gw = rec.get("gateway") or (str(self._network_gateway(pid.pool) or ""))
        if gw and ip == ipaddress.ip_address(gw):
            raise Conflict(f"address {ip} is the gateway of {pid.pool}")
        holder = self.ipam.owners(pid.pool).get(ip)
        if holder is not None:
            raise Conflict(f"address {ip} is already in use in {pid.pool}")
        name = options.get("com.docker.network.endpoint.name", "")
        self.ipam.reserve(pid.pool, ip, keys.docker_address_owner(secrets.token_hex(8)), container_id=name)
        return ip

    def _any(self, pid: PoolId, rec: dict, options: dict[str, str]) -> IPAddress:
        pool = pid.pool
        gw_s = rec.get("gateway") or str(self._network_gateway(pool) or "")
        gw = ipaddress.ip_address(gw_s) if gw_s else None
        start = end = None
        if pid.sub_pool is not None:
            sub = pid.sub_pool
            start = max(sub.network_address, pool.network_address + 1)
            last = sub.broadcast_address
            if pool.version == 4 and last == pool.broadcast_address:
                last = last - 1
            end = last
            if start > end:
                raise Exhausted(f"ip-range {sub} has no usable address")
        rng = IPRange(pool, start, end, gw)
        name = options.get("com.docker.network.endpoint.name", "")
        try:
            got = self.ipam.allocate(((rng,),), keys.docker_address_owner(secrets.token_hex(8)), container_id=name)
        except Exhausted:
            raise Exhausted(f"no free address left in {pid.sub_pool or pool}") from None
        return got[0][0].ip

    def release_address(self, req: ReleaseAddressRequest) -> None:
        pid = PoolId.parse(req.pool_id)
        pid = PoolId(pid.space, self._subnet(pid.pool), pid.sub_pool)
        if not req.address:
            return
        try:
            ip = ipaddress.ip_address(req.address.split("/")[0])
        except ValueError:
            raise Invalid(f"address {req.address!r} is not an IP address") from None
        with self.lock:
            holder = self.ipam.owners(pid.pool).get(ip)
            if holder is None:
                return  # idempotent (or the gateway of a joined network)
            if holder.startswith(GW_OWNER):
                rec = self.pool_record(pid)
                if rec is not None and int(rec.get("refs", 1)) > 1:
                    return  # another Docker network on this subnet still uses the gateway
            elif not holder.startswith(ADDR_OWNER):
                log.warning("ReleaseAddress %s in %s: held by %s, not Docker; left alone", ip, pid.pool, holder)
                return
            self.ipam.release_ip(pid.pool, ip)

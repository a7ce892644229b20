"""Plain data of a cluster network: its config, one host's record, and the kernel
objects a host should have (routes, FDB and neighbour entries, a VXLAN device).

Pure: no I/O. The agent observes the kernel into the same shapes and applies diff().
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field, fields
from typing import Any

from muslin.model.errors import Invalid

BACKENDS = ("vxlan", "host-gw", "bgp")
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
RTPROT_MUSLIN = 77  # routes the agent owns carry this protocol number
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")  # fullmatch


def check_name(what: str, name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise Invalid(f"{what} {name!r} is not valid: use 1-32 letters, digits, '.', '_' or '-'")
    return name


@dataclass(frozen=True)
class ClusterConfig:
    """cluster/<network>/config."""

    network: str
    cidr: str = "10.244.0.0/16"
    host_prefix: int = 24
    backend: str = "vxlan"
    vni: int = 1
    port: int = 4789
    asn: int = 64512
    route_reflectors: tuple[str, ...] = ()  # hostnames; empty = full mesh
    lease_ttl: int = 30
    mtu: int = 0  # 0 = underlay MTU (minus the VXLAN overhead for vxlan)

    def validate(self) -> ClusterConfig:
        check_name("network name", self.network)
        if self.backend not in BACKENDS:
            raise Invalid(f"unknown backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        try:
            net = ipaddress.ip_network(self.cidr)
        except ValueError as e:
            raise Invalid(f"cluster CIDR {self.cidr!r} is not a network: {e}") from None
        if net.version != 4:
            raise Invalid(f"cluster CIDR {self.cidr}: only IPv4 cluster networks are supported")
        if not net.prefixlen <= self.host_prefix <= 30:
            raise Invalid(f"host prefix /{self.host_prefix} must be between /{net.prefixlen} "
                          f"(the cluster CIDR) and /30")
        if not 1 <= self.vni < 1 << 24:
            raise Invalid(f"VNI {self.vni} is out of range 1..16777215")
        if not 1 <= self.port <= 65535:
            raise Invalid(f"VXLAN port {self.port} is out of range 1..65535")
        if not 1 <= self.asn < 1 << 32:
            raise Invalid(f"BGP AS {self.asn} is out of range 1..4294967295")
        if self.lease_ttl < 1:
            raise Invalid(f"lease TTL {self.lease_ttl} must be at least 1 second")
        return self

    @property
    def network_cidr(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    def capacity(self) -> int:
        return 1 << (self.host_prefix - self.network_cidr.prefixlen)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["route_reflectors"] = list(self.route_reflectors)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise Invalid(f"cluster config: unknown key(s) {', '.join(unknown)}")
        kw = dict(d)
        kw["route_reflectors"] = tuple(d.get("route_reflectors", ()))
        try:
            return cls(**kw).validate()
        except TypeError as e:
            raise Invalid(f"cluster config: {e}") from None


@dataclass(frozen=True)
class HostRecord:
    """cluster/<network>/hosts/<hostname>: what every other host needs to reach this one."""

    hostname: str
    subnet: str
    underlay: str  # underlay address
    underlay_net: str = ""  # the underlay's connected subnet (host-gw reachability)
    vtep_mac: str = ""
    vtep_ip: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HostRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Local:
    """What the agent knows about its own host."""

    record: HostRecord
    underlay_dev: str
    underlay_mtu: int = 1500


@dataclass(frozen=True, order=True)
class RouteSpec:
    dst: str
    gateway: str
    dev: str
    onlink: bool = False


@dataclass(frozen=True, order=True)
class NeighSpec:
    dev: str
    ip: str
    mac: str


@dataclass(frozen=True, order=True)
class FdbSpec:
    dev: str
    mac: str
    dst: str


@dataclass(frozen=True)
class VxlanDev:
    name: str
    vni: int
    local: str
    port: int
    underlay_dev: str
    mtu: int
    mac: str
    address: str  # vtep address with /32


@dataclass(frozen=True)
class Desired:
    routes: frozenset[RouteSpec] = frozenset()
    neighs: frozenset[NeighSpec] = frozenset()
    fdb: frozenset[FdbSpec] = frozenset()
    vxlan: VxlanDev | None = None
    bird_config: str = ""
    network_mtu: int = 1500
    problems: tuple[str, ...] = ()  # peers that cannot be reached, one line each


@dataclass(frozen=True)
class Observed:
    routes: frozenset[RouteSpec] = frozenset()
    neighs: frozenset[NeighSpec] = frozenset()
    fdb: frozenset[FdbSpec] = frozenset()
    vxlan: VxlanDev | None = None


@dataclass(frozen=True)
class Changes:
    """What to do to turn observed into desired. Deletions first, then additions."""

    del_routes: tuple[RouteSpec, ...] = ()
    add_routes: tuple[RouteSpec, ...] = ()
    del_neighs: tuple[NeighSpec, ...] = ()
    add_neighs: tuple[NeighSpec, ...] = ()
    del_fdb: tuple[FdbSpec, ...] = ()
    add_fdb: tuple[FdbSpec, ...] = ()
    vxlan_create: VxlanDev | None = None  # create (or recreate) the device
    vxlan_delete: str = ""  # delete the device of this name first
    vxlan_update: VxlanDev | None = None  # fix mtu / mac / address in place
    notes: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.del_routes or self.add_routes or self.del_neighs or self.add_neighs or self.del_fdb
                    or self.add_fdb or self.vxlan_create or self.vxlan_delete or self.vxlan_update)

    def summary(self) -> str:
        parts = []
        for name in ("del_routes", "add_routes", "del_neighs", "add_neighs", "del_fdb", "add_fdb"):
            n = len(getattr(self, name))
            if n:
                parts.append(f"{name.replace('_', ' ')} {n}")
        if self.vxlan_delete:
            parts.append(f"delete device {self.vxlan_delete}")
        if self.vxlan_create:
            parts.append(f"create device {self.vxlan_create.name}")
        if self.vxlan_update:
            parts.append(f"update device {self.vxlan_update.name}")
        return ", ".join(parts) or "nothing"


def diff(desired: Desired, observed: Observed) -> Changes:
    """The smallest set of changes from observed to desired (pure)."""
    vx_create = vx_update = None
    vx_delete = ""
    want, have = desired.vxlan, observed.vxlan
    if want is not None:
        if have is None:
            vx_create = want
        elif (have.vni, have.local, have.port, have.underlay_dev) != (want.vni, want.local, want.port, want.underlay_dev):
            vx_delete, vx_create = have.name, want
        elif (have.mtu, have.mac.lower(), have.address) != (want.mtu, want.mac.lower(), want.address):
            vx_update = want
    elif have is not None:
        vx_delete = have.name
    # a recreated device loses its FDB and neighbours: program them all again
    fresh = vx_create is not None
    obs_neighs = frozenset() if fresh else observed.neighs
    obs_fdb = frozenset() if fresh else observed.fdb
    obs_routes = frozenset(r for r in observed.routes if not (fresh and want and r.dev == want.name))
    return Changes(
        del_routes=tuple(sorted(obs_routes - desired.routes)),
        add_routes=tuple(sorted(desired.routes - obs_routes)),
        del_neighs=tuple(sorted(obs_neighs - desired.neighs)),
        add_neighs=tuple(sorted(desired.neighs - obs_neighs)),
        del_fdb=tuple(sorted(obs_fdb - desired.fdb)),
        add_fdb=tuple(sorted(desired.fdb - obs_fdb)),
        vxlan_create=vx_create, vxlan_delete=vx_delete, vxlan_update=vx_update,
    )


def owned(observed: Observed, cidr: ipaddress.IPv4Network) -> Observed:
    """Only the routes of one cluster network (inside its CIDR); other networks' stay."""
    return Observed(frozenset(r for r in observed.routes if ipaddress.ip_network(r.dst).subnet_of(cidr)),
                    observed.neighs, observed.fdb, observed.vxlan)


def vtep_mac(network: str, hostname: str) -> str:
    """A stable, locally administered unicast MAC for a host's VTEP."""
    h = hashlib.sha256(f"{network}/{hostname}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (bytes([(h[0] & 0xFC) | 0x02]) + h[1:6]))


def device_name(prefix: str, network: str) -> str:
    """A kernel link name (<= 15 chars) for a network: prefix + name, hashed when long."""
    name = prefix + network
    if len(name) <= 15:
        return name
    return prefix + network[: 15 - len(prefix) - 5] + "-" + hashlib.sha256(network.encode()).hexdigest()[:4]

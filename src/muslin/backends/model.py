"""Plain data of a cluster network: its config, one host's record, and the kernel
objects a host should have (routes, FDB and neighbour entries, a VXLAN device).

Pure: no I/O. The agent observes the kernel into the same shapes and applies diff().
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, fields
from typing import Any

from muslin.model.errors import Invalid
from muslin.model.kernel import Changes, FdbSpec, NeighSpec, Observed, RouteSpec, VxlanDev

BACKENDS = ("vxlan", "host-gw", "bgp")
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
DEFAULT_SUBNET_TTL = 86400  # a host's subnet lease (renewed), like flannel's 24 h
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
    lease_ttl: int = 30  # liveness: TTL of cluster/<net>/alive/<host> (health only, never routing)
    mtu: int = 0  # 0 = underlay MTU (minus the VXLAN overhead for vxlan)
    # the subnet lease: TTL of a host's record and subnet key (renewed); peers drop a host
    # only when it leaves or this expires. Configs stored without it get the default.
    subnet_ttl: int = DEFAULT_SUBNET_TTL

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
        if self.subnet_ttl < self.lease_ttl:
            raise Invalid(f"subnet lease TTL {self.subnet_ttl} must be at least the liveness lease TTL "
                          f"{self.lease_ttl}")
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


@dataclass(frozen=True)
class Desired:
    routes: frozenset[RouteSpec] = frozenset()
    neighs: frozenset[NeighSpec] = frozenset()
    fdb: frozenset[FdbSpec] = frozenset()
    vxlan: VxlanDev | None = None
    bird_config: str = ""
    network_mtu: int = 1500
    problems: tuple[str, ...] = ()  # peers that cannot be reached, one line each


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


def stable_mac(text: str) -> str:
    """A locally administered unicast MAC derived from text (the same text, the same MAC)."""
    h = hashlib.sha256(text.encode()).digest()
    return ":".join(f"{b:02x}" for b in (bytes([(h[0] & 0xFC) | 0x02]) + h[1:6]))


def vtep_mac(network: str, hostname: str) -> str:
    """A stable, locally administered unicast MAC for a host's VTEP."""
    return stable_mac(f"{network}/{hostname}")


def device_name(prefix: str, network: str) -> str:
    """A kernel link name (<= 15 chars) for a network: prefix + name, hashed when long."""
    name = prefix + network
    if len(name) <= 15:
        return name
    return prefix + network[: 15 - len(prefix) - 5] + "-" + hashlib.sha256(network.encode()).hexdigest()[:4]

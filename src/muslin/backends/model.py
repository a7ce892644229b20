"""Plain data of a cluster network: its config, one host's record, what the agent knows
about its own host, and the kernel state a host should have (Desired); diff() turns
what the kernel has (model.kernel.Observed) into it.

Nothing here belongs to one backend: a backend's own settings are `ClusterConfig.options`
(checked by the backend), what a host publishes for its peers is `HostRecord.published`.
Pure: no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import dataclass, fields, replace
from collections.abc import Mapping
from typing import Any

from muslin.model import names
from muslin.model.errors import Invalid
from muslin.model.kernel import (Changes, Device, EgressGuard, FdbSpec, NeighSpec, Observed, RouteSpec,
                                 WgPeer)

DEFAULT_SUBNET_TTL = 86400  # a host's subnet lease (renewed), like flannel's 24 h
NAME_MAX = 32  # cluster network and host names: they become parts of keys and device names


@dataclass(frozen=True)
class ClusterConfig:
    """cluster/<network>/config."""

    network: str
    cidr: str = "10.244.0.0/16"  # IPv4, or IPv6 for an IPv6-only network
    host_prefix: int = 24
    backend: str = "vxlan"
    vni: int = 1
    port: int = 4789
    asn: int = 64512
    route_reflectors: tuple[str, ...] = ()  # hostnames; empty = full mesh
    lease_ttl: int = 90  # liveness: TTL of cluster/<net>/alive/<host> (health only, never routing)
    mtu: int = 0  # 0 = underlay MTU (minus the VXLAN overhead for vxlan)
    # the subnet lease: TTL of a host's record and subnet key (renewed); peers drop a host
    # only when it leaves or this expires. Configs stored without it get the default.
    subnet_ttl: int = DEFAULT_SUBNET_TTL
    # the backend's own settings (the backend checks them), as sorted (key, value) pairs;
    # vni/port (vxlan) and asn/route_reflectors (bgp) predate this and stay where they were
    options: tuple[tuple[str, Any], ...] = ()
    # dual-stack: the IPv6 CIDR next to an IPv4 `cidr`, and its per-host prefix length; a host
    # leases one subnet of each, together
    cidr6: str = ""
    host_prefix6: int = 64

    def __post_init__(self) -> None:
        opts = self.options.items() if isinstance(self.options, Mapping) else self.options
        object.__setattr__(self, "options", tuple(sorted((str(k), v) for k, v in opts)))

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def validate(self) -> ClusterConfig:
        from muslin.backends.registry import get_backend  # the registry imports this module

        names.check_name(self.network, "network name", NAME_MAX)
        backend = get_backend(self.backend)
        net = _cidr(self.cidr, "cluster CIDR")
        _check_prefix(net, self.host_prefix, "host prefix")
        if self.cidr6:
            net6 = _cidr(self.cidr6, "IPv6 cluster CIDR (cidr6)")
            if net6.version != 6:
                raise Invalid(f"IPv6 cluster CIDR (cidr6) {self.cidr6} is not an IPv6 network")
            if net.version != 4:
                raise Invalid(f"cluster CIDR {self.cidr} must be IPv4 when cidr6 is given (an IPv6-only network "
                              f"has its IPv6 CIDR as cidr and no cidr6)")
            _check_prefix(net6, self.host_prefix6, "IPv6 host prefix")
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
        backend.check(self)
        return self

    @property
    def network_cidr(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The first CIDR (IPv4, or IPv6 in an IPv6-only network)."""
        return ipaddress.ip_network(self.cidr)

    def families(self) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int], ...]:
        """(CIDR, per-host prefix length) of each address family, the first one first."""
        out = ((self.network_cidr, self.host_prefix),)
        return out + ((ipaddress.IPv6Network(self.cidr6), self.host_prefix6),) if self.cidr6 else out

    @property
    def cidrs(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(c for c, _ in self.families())

    @property
    def has_ipv6(self) -> bool:
        return any(c.version == 6 for c in self.cidrs)

    def capacity(self) -> int:
        """How many hosts it holds: the smaller family's count of per-host subnets."""
        return min(1 << (p - c.prefixlen) for c, p in self.families())

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["route_reflectors"] = list(self.route_reflectors)
        d["options"] = dict(self.options)
        if not d["options"]:  # configs without options read the same in older agents
            del d["options"]
        if not self.cidr6:  # single-stack configs read the same in older agents
            del d["cidr6"], d["host_prefix6"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise Invalid(f"cluster config: unknown key(s) {', '.join(unknown)}")
        kw = dict(d)
        kw["route_reflectors"] = tuple(d.get("route_reflectors", ()))
        if not isinstance(d.get("options", {}), dict):
            raise Invalid("cluster config: options must be an object")
        kw["options"] = d.get("options", {})
        try:
            return cls(**kw).validate()
        except TypeError as e:
            raise Invalid(f"cluster config: {e}") from None


def _cidr(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text)
    except (ValueError, TypeError) as e:
        raise Invalid(f"{what} {text!r} is not a network: {e}") from None


def _check_prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network, prefix: int, what: str) -> None:
    """A per-host prefix inside the CIDR that leaves a few addresses for endpoints."""
    longest = 30 if net.version == 4 else 126
    if type(prefix) is not int or not net.prefixlen <= prefix <= longest:
        raise Invalid(f"{what} /{prefix} must be between /{net.prefixlen} (the cluster CIDR {net}) and /{longest}")


@dataclass(frozen=True)
class HostRecord:
    """cluster/<network>/hosts/<hostname>: what every other host needs to reach this one."""

    hostname: str
    subnet: str
    underlay: str  # underlay address
    underlay_net: str = ""  # the underlay's connected subnet (host-gw reachability)
    # what this host's backend publishes for its peers (vxlan: vtep_mac, vtep_ip; wireguard:
    # public_key, endpoint), as sorted (key, value) pairs
    published: tuple[tuple[str, str], ...] = ()
    subnet6: str = ""  # dual-stack: its IPv6 subnet (the IPv4 one is `subnet`)
    underlay6: str = ""  # its IPv6 underlay address and connected subnet, when it has one
    underlay_net6: str = ""

    def __post_init__(self) -> None:
        pub = self.published.items() if isinstance(self.published, Mapping) else self.published
        object.__setattr__(self, "published", tuple(sorted((str(k), str(v)) for k, v in pub)))

    def get(self, key: str, default: str = "") -> str:
        return dict(self.published).get(key, default)

    @property
    def subnets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.subnet, self.subnet6) if s)

    def subnet_of(self, version: int) -> str:
        """Its subnet of one address family, or ''."""
        return next((s for s in self.subnets if ipaddress.ip_network(s).version == version), "")

    def to_dict(self) -> dict[str, Any]:
        d = {"hostname": self.hostname, "subnet": self.subnet, "underlay": self.underlay,
             "underlay_net": self.underlay_net, "published": dict(self.published)}
        for k in ("subnet6", "underlay6", "underlay_net6"):  # single-stack records read as before
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HostRecord:
        """Also reads the records of older agents, which had vtep_mac/vtep_ip at the top."""
        pub = dict(d.get("published") or {})
        for legacy in LEGACY_PUBLISHED:
            if d.get(legacy) and legacy not in pub:
                pub[legacy] = d[legacy]
        return cls(d["hostname"], d["subnet"], d["underlay"], d.get("underlay_net", ""), pub,
                   d.get("subnet6", ""), d.get("underlay6", ""), d.get("underlay_net6", ""))


LEGACY_PUBLISHED = ("vtep_mac", "vtep_ip")


@dataclass(frozen=True)
class Local:
    """What the agent knows about its own host: its record, its underlay, and the facts its
    backend's companions found (key file, interface name, ...: never published)."""

    record: HostRecord
    underlay_dev: str
    underlay_mtu: int = 1500
    facts: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        f = self.facts.items() if isinstance(self.facts, Mapping) else self.facts
        object.__setattr__(self, "facts", tuple(sorted((str(k), str(v)) for k, v in f)))

    def fact(self, key: str, default: str = "") -> str:
        return dict(self.facts).get(key, default)


@dataclass(frozen=True)
class Desired:
    """The kernel state a host should have for one cluster network, plus the configs of the
    backend's companion processes (e.g. ("bird", <BIRD's config>))."""

    routes: frozenset[RouteSpec] = frozenset()
    neighs: frozenset[NeighSpec] = frozenset()
    fdb: frozenset[FdbSpec] = frozenset()
    devices: tuple[Device, ...] = ()
    peers: frozenset[WgPeer] = frozenset()
    guards: tuple[EgressGuard, ...] = ()
    companions: tuple[tuple[str, str], ...] = ()
    network_mtu: int = 1500
    problems: tuple[str, ...] = ()  # peers that cannot be reached, one line each

    def companion_config(self, name: str) -> str:
        return dict(self.companions).get(name, "")


def diff(desired: Desired | Observed, observed: Observed) -> Changes:
    """The smallest set of changes from observed to desired (pure). A device whose
    immutable part differs is recreated, and what lived on it (neighbours, FDB entries,
    WireGuard peers, routes through it) is programmed again; WireGuard peers are known by
    their public key: a new key is the old peer removed and a new one set."""
    want = {d.name: d for d in desired.devices}
    have = {d.name: d for d in observed.devices}
    create, delete, update = [], [], []
    for name, d in sorted(want.items()):
        h = have.get(name)
        if h is None:
            create.append(d)
        elif type(h) is not type(d) or h.immutable() != d.immutable():
            delete.append(name)
            create.append(d)
        elif h.mutable() != d.mutable():
            update.append(d)
    delete += sorted(n for n in have if n not in want)
    gone = set(delete) | {d.name for d in create}
    obs_routes = frozenset(r for r in observed.routes if r.dev not in gone)
    obs_neighs = frozenset(n for n in observed.neighs if n.dev not in gone)
    obs_fdb = frozenset(f for f in observed.fdb if f.dev not in gone)
    obs_peers = frozenset(p for p in observed.peers if p.dev not in gone)
    want_keys = {(p.dev, p.public_key) for p in desired.peers}
    want_guards = {g.table: g for g in desired.guards}
    have_guards = {g.table: g for g in observed.guards}
    return Changes(
        set_guards=tuple(g for t, g in sorted(want_guards.items()) if have_guards.get(t) != g),
        del_routes=tuple(sorted(obs_routes - desired.routes)),  # routes via a gone device go with it
        delete_devices=tuple(delete), create_devices=tuple(create), update_devices=tuple(update),
        del_neighs=tuple(sorted(obs_neighs - desired.neighs)),
        add_neighs=tuple(sorted(desired.neighs - obs_neighs)),
        del_fdb=tuple(sorted(obs_fdb - desired.fdb)),
        add_fdb=tuple(sorted(desired.fdb - obs_fdb)),
        del_peers=tuple(sorted(p for p in obs_peers if (p.dev, p.public_key) not in want_keys)),
        set_peers=tuple(sorted(desired.peers - obs_peers)),
        add_routes=tuple(sorted(desired.routes - obs_routes)),
        delete_guards=tuple(sorted(t for t in have_guards if t not in want_guards)),
    )


def owned(observed: Observed, cidrs: Any) -> Observed:
    """Only the routes of one cluster network (inside its CIDRs: one network or several);
    other networks' stay."""
    nets = (cidrs,) if isinstance(cidrs, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else tuple(cidrs)
    return replace(observed, routes=frozenset(r for r in observed.routes if any(_inside(r.dst, c) for c in nets)))


@functools.lru_cache(maxsize=1 << 16)
def _inside(dst: str, cidr: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """dst (a route's destination) within cidr; remembered: a resync asks it of every peer's route."""
    net = ipaddress.ip_network(dst)
    return net.version == cidr.version and net.subnet_of(cidr)  # type: ignore[arg-type]


def stable_mac(text: str) -> str:
    """A locally administered unicast MAC derived from text (the same text, the same MAC)."""
    h = hashlib.sha256(text.encode()).digest()
    return ":".join(f"{b:02x}" for b in (bytes([(h[0] & 0xFC) | 0x02]) + h[1:6]))


def device_name(prefix: str, network: str) -> str:
    """A kernel link name (<= 15 chars) for a network: prefix + name, hashed when long."""
    name = prefix + network
    if len(name) <= 15:
        return name
    return prefix + network[: 15 - len(prefix) - 5] + "-" + hashlib.sha256(network.encode()).hexdigest()[:4]

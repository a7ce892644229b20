"""Kernel objects as plain data: what the dataplane reports and what it is asked to make.

Pure: no I/O. The real dataplane (muslin.dataplane.kernel) and the in-memory one
(muslin.dataplane.fake) speak these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from muslin.model.types import IPInterface, Route


@dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    mac: str
    mtu: int
    master: int  # ifindex of the bridge it is enslaved to, 0 = none
    up: bool
    kind: str  # "bridge", "veth", "macvlan", ... ("" for a plain device)
    alias: str = ""  # IFLA_IFALIAS: Muslin marks the bridges it makes


@dataclass(frozen=True)
class SandboxConfig:
    """How to configure one interface inside a sandbox's namespace."""

    ifname: str
    addresses: tuple[IPInterface, ...]
    routes: tuple[Route, ...]
    mtu: int = 0
    mac: str = ""
    replace_default: bool = False  # else a default route is added only where the sandbox has none


@dataclass(frozen=True)
class SandboxResult:
    mac: str
    routes: tuple[Route, ...]  # the routes actually installed (a kept default route is not ours)


# -- the multi-host agent's kernel objects (backends compute them, dataplane/overlay.py makes them)

RTPROT_MUSLIN = 77  # routes the agent owns carry this protocol number


@dataclass(frozen=True, order=True)
class RouteSpec:
    dst: str
    gateway: str  # "" = a device route (e.g. through a WireGuard interface)
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
    address: str  # IPv4 vtep address with /32 ("": an IPv6-only network)
    ipv6: bool = False  # carries IPv6 (dual-stack or IPv6-only network): IPv6 on, no addresses of its own

    def immutable(self) -> tuple:
        """What cannot change in place: a difference recreates the device."""
        return (self.vni, self.local, self.port, self.underlay_dev)

    def mutable(self) -> tuple:
        return (self.mtu, self.mac.lower(), self.address, self.ipv6)


@dataclass(frozen=True)
class WgDev:
    """A WireGuard interface: in the kernel, or a TUN device served by wireguard-go."""

    name: str
    port: int  # UDP listen port
    mtu: int
    public_key: str  # of the private key it holds (observed: what `wg show` says)
    userspace: bool = True  # wireguard-go (TUN) rather than the kernel module
    key_file: str = field(default="", compare=False)  # where the private key is read from (never its content)
    log: str = field(default="", compare=False)  # wireguard-go's log file

    def immutable(self) -> tuple:
        return (self.userspace,)

    def mutable(self) -> tuple:
        return (self.port, self.mtu, self.public_key)


Device = VxlanDev | WgDev


@dataclass(frozen=True, order=True)
class WgPeer:
    """One peer of a WireGuard interface, known by its public key."""

    dev: str
    public_key: str
    endpoint: str  # "address:port"
    allowed_ips: tuple[str, ...]
    keepalive: int = 0  # persistent keepalive in seconds, 0 = off


@dataclass(frozen=True, order=True)
class EgressGuard:
    """An nft table of the agent's own (`inet <table>`): traffic from `src` to `dst`, but not
    to `src` itself, that would leave by any interface other than `via` is dropped. The
    wireguard backend's strict mode: pod traffic never leaves unencrypted."""

    table: str
    src: str
    dst: str
    via: str


@dataclass(frozen=True)
class Observed:
    routes: frozenset[RouteSpec] = frozenset()
    neighs: frozenset[NeighSpec] = frozenset()
    fdb: frozenset[FdbSpec] = frozenset()
    devices: tuple[Device, ...] = ()
    peers: frozenset[WgPeer] = frozenset()
    guards: tuple[EgressGuard, ...] = ()


@dataclass(frozen=True)
class Owned:
    """The names of what a backend may have made on a host: the agent observes those only."""

    devices: tuple[str, ...] = ()
    guards: tuple[str, ...] = ()  # nft tables (family inet)


@dataclass(frozen=True)
class Changes:
    """What to do to turn observed into desired. Applied in this order: guards set, routes
    deleted, devices deleted, created, updated, neighbours and FDB entries deleted then
    added, WireGuard peers removed and set (one `wg set` per device), routes added, guards
    deleted."""

    set_guards: tuple[EgressGuard, ...] = ()
    del_routes: tuple[RouteSpec, ...] = ()
    delete_devices: tuple[str, ...] = ()
    create_devices: tuple[Device, ...] = ()  # create (or, after a delete, recreate)
    update_devices: tuple[Device, ...] = ()  # fix what can change in place
    del_neighs: tuple[NeighSpec, ...] = ()
    add_neighs: tuple[NeighSpec, ...] = ()
    del_fdb: tuple[FdbSpec, ...] = ()
    add_fdb: tuple[FdbSpec, ...] = ()
    del_peers: tuple[WgPeer, ...] = ()
    set_peers: tuple[WgPeer, ...] = ()  # added or changed
    add_routes: tuple[RouteSpec, ...] = ()
    delete_guards: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    def summary(self) -> str:
        parts = []
        for name in ("set_guards", "del_routes", "add_routes", "del_neighs", "add_neighs", "del_fdb", "add_fdb",
                     "del_peers", "set_peers", "delete_guards"):
            n = len(getattr(self, name))
            if n:
                parts.append(f"{name.replace('_', ' ')} {n}")
        for name in self.delete_devices:
            parts.append(f"delete device {name}")
        for d in self.create_devices:
            parts.append(f"create device {d.name}")
        for d in self.update_devices:
            parts.append(f"update device {d.name}")
        return ", ".join(parts) or "nothing"

"""Kernel objects as plain data: what the dataplane reports and what it is asked to make.

Pure: no I/O. The real dataplane (muslin.dataplane.kernel) and the in-memory one
(muslin.dataplane.fake) speak these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

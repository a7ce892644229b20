"""Kernel objects as plain data: what the dataplane reports and what it is asked to make.

Pure: no I/O. The real dataplane (muslin.dataplane.kernel) and the in-memory one
(muslin.dataplane.fake) speak these types.
"""

from __future__ import annotations

from dataclasses import dataclass

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

"""The NetworkDriver interface and the one registry of drivers by name.

A driver owns what differs between network kinds: what a network needs (`needs_subnet`),
whether it has a bridge that the firewall, port mappings and DOCKER-USER apply to
(`bridged`), its modes, the kernel facts it checks before anything is made (`preflight`)
and the steps that make and unmake its kernel objects. The use-cases (control/) run those
steps with the plan runner, which undoes exactly what ran when a later step fails.

Drivers are pure at import time: they reach the kernel only through the `Kernel` object
they are handed (dataplane/api.py), so they run on the real kernel and on the fake alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from muslin.model.errors import Invalid, Unsupported
from muslin.model.types import AttachRequest, Endpoint, Interface, IPAddress, IPInterface, Network, Route
from muslin.plan import Step

if TYPE_CHECKING:
    from muslin.dataplane.api import Kernel

Addr = tuple[IPInterface, IPAddress | None]  # an address and its gateway


@dataclass
class Made:
    """What an attach's steps made, filled in as they run."""

    host_ifname: str = ""
    mac: str = ""
    mtu: int = 0
    routes: tuple[Route, ...] = ()
    peer: str = ""
    interfaces: list[Interface] = field(default_factory=list)
    addresses: tuple[IPInterface, ...] | None = None  # reported by the driver itself (container)


class NetworkDriver(Protocol):
    name: str
    uses_ipam: bool  # its endpoints get addresses
    needs_subnet: bool  # a network needs at least one subnet
    bridged: bool  # a Linux bridge: firewall entries, published ports, DOCKER-USER, hairpin
    modes: tuple[str, ...]  # the values of Network.mode it accepts (() = mode unused)
    options: tuple[str, ...]  # the keys of Network.options it understands

    def check(self, net: Network) -> Network:
        """Fill defaults and validate, without the kernel (Invalid, one line)."""

    def preflight(self, k: Kernel, net: Network) -> None:
        """Refuse, before anything is made, what this kernel cannot make or must not touch."""

    def ready(self, k: Kernel, net: Network) -> bool:
        """True when the network's shared kernel objects are there (cheap)."""

    def gateways(self, net: Network) -> list[IPInterface]:
        """The host's addresses on the network's shared link (a bridge's gateways)."""

    def setup_steps(self, k: Kernel, net: Network, made: list[str]) -> list[Step]:
        """Steps making the network's shared kernel objects; `made` collects what Muslin
        adds to objects it did not make (so teardown removes exactly that)."""

    def teardown(self, k: Kernel, net: Network) -> None:
        """Remove the network's shared kernel objects Muslin made (idempotent)."""

    def attach_steps(self, k: Kernel, net: Network, req: AttachRequest, addrs: list[Addr], out: Made) -> list[Step]:
        """Steps connecting a sandbox; they fill `out`."""

    def detach(self, k: Kernel, net: Network, ep: Endpoint, retire: bool = False) -> bool:
        """Disconnect (idempotent; the sandbox may be gone). With `retire`, a link whose
        deletion is slow may be retired for a later reap instead: True when one was, so its
        addresses must wait for the reap."""

    def check_endpoint(self, k: Kernel, net: Network, ep: Endpoint) -> None:
        """Raise NotFound if the kernel disagrees with `ep`."""


class MissingDriver:
    """A driver Muslin names but cannot offer here: every network of it is Unsupported."""

    uses_ipam = needs_subnet = bridged = False
    modes: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def __init__(self, name: str, kind: str, feature: str) -> None:
        self.name, self.kind, self.feature = name, kind, feature

    def check(self, net: Network) -> Network:
        return net

    def gateways(self, net: Network) -> list:
        return []

    def preflight(self, k: Kernel, net: Network) -> None:
        if not k.kind_supported(self.kind):
            raise Unsupported(f"{self.name}: {self.feature} are not available in this kernel")
        raise Unsupported(f"{self.name}: Muslin has no {self.name} driver yet")


def _registry() -> dict[str, NetworkDriver]:
    from muslin.drivers import bridge, macvlan, simple

    return {d.name: d for d in (bridge.BridgeDriver(), macvlan.MacvlanDriver(), simple.HostDriver(),
                                simple.NoneDriver(), simple.ContainerDriver(),
                                MissingDriver("ipvlan", "ipvlan", "ipvlan devices (kernel module ipvlan)"),
                                MissingDriver("vlan", "vlan", "802.1Q VLAN devices (kernel module 8021q)"))}


_DRIVERS: dict[str, NetworkDriver] = {}


def drivers() -> dict[str, NetworkDriver]:
    if not _DRIVERS:
        _DRIVERS.update(_registry())
    return _DRIVERS


def names() -> tuple[str, ...]:
    return tuple(drivers())


def get_driver(name: str) -> NetworkDriver:
    d = drivers().get(name)
    if d is None:
        raise Invalid(f"unknown driver {name!r}: use one of {', '.join(names())}")
    return d

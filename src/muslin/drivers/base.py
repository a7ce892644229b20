"""The NetworkDriver interface and the registry of drivers by name."""

from __future__ import annotations

from typing import Protocol

from muslin.dataplane.links import Host
from muslin.model.errors import Invalid, Unsupported
from muslin.model.types import AttachRequest, Endpoint, IPAddress, IPInterface, Network

Addr = tuple[IPInterface, IPAddress | None]  # an address and its gateway


class NetworkDriver(Protocol):
    name: str
    uses_ipam: bool

    def validate(self, net: Network) -> None:
        """Raise Invalid/Unsupported for a configuration this driver cannot make."""

    def setup_network(self, host: Host, net: Network) -> None:
        """Make the network's shared kernel objects (idempotent)."""

    def network_ready(self, host: Host, net: Network) -> bool:
        """True when setup_network has nothing to do (cheap)."""

    def teardown_network(self, host: Host, net: Network) -> None:
        """Remove the network's shared kernel objects (idempotent)."""

    def attach(self, host: Host, net: Network, req: AttachRequest, addrs: list[Addr]) -> Endpoint:
        """Connect a sandbox; on failure undo everything it did, then raise."""

    def detach(self, host: Host, net: Network, ep: Endpoint) -> None:
        """Disconnect (idempotent; the sandbox may be gone)."""

    def check(self, host: Host, net: Network, ep: Endpoint) -> None:
        """Raise if the kernel disagrees with `ep`."""


def get_driver(name: str) -> NetworkDriver:
    from muslin.drivers import bridge, macvlan, simple

    drivers: dict[str, NetworkDriver] = {
        "bridge": bridge.BridgeDriver(),
        "macvlan": macvlan.MacvlanDriver(),
        "host": simple.HostDriver(),
        "none": simple.NoneDriver(),
        "container": simple.ContainerDriver(),
    }
    if name in MISSING:
        raise unsupported(name)
    if name not in drivers:
        raise Invalid(f"unknown driver {name!r}: use one of bridge, macvlan, host, none, container")
    return drivers[name]


# Drivers Muslin has no implementation of, and the kernel feature each needs.
MISSING = {"ipvlan": "ipvlan devices (kernel module ipvlan)", "vlan": "802.1Q VLAN devices (kernel module 8021q)"}


def unsupported(name: str) -> Unsupported:
    """Name what is missing: the kernel feature when this kernel lacks it, else the driver."""
    with Host() as host:
        if not host.kind_supported(name):
            return Unsupported(f"{name}: {MISSING[name]} are not available in this kernel")
    return Unsupported(f"{name}: Muslin has no {name} driver yet")

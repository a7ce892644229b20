"""Desired firewall state: which Muslin networks and port mappings exist (pure data).

Bad input raises `Invalid` with one line naming the field and the reason.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from muslin.firewall.antispoof import Guard
from muslin.firewall.policy import PolicyInput
from muslin.model import names
from muslin.model.errors import Invalid
from muslin.model.types import IPAddress, IPNetwork

PROTOCOLS = ("tcp", "udp", "sctp")
# Interface names we put into nft sets: kernel limit of 15 bytes, and only characters
# that need no escaping inside an nft string ("*" would be a wildcard).
def check_ifname(name: str, what: str = "bridge") -> None:
    try:
        names.check_bridge_name(name, f"{what} name")
    except Invalid as e:
        raise Invalid(f"firewall: {e.message}") from None


@dataclass(frozen=True)
class NetRule:
    """One Muslin network as the firewall sees it."""

    bridge: str
    subnets: tuple[IPNetwork, ...] = ()
    masquerade: bool = True
    internal: bool = False
    isolate: bool = True
    gateways: tuple[IPAddress, ...] = ()  # the host's own addresses on the bridge

    def __post_init__(self) -> None:
        check_ifname(self.bridge)
        subnets = []
        for s in self.subnets:
            try:
                subnets.append(ipaddress.ip_network(s))
            except ValueError as e:
                raise Invalid(f"firewall: network on {self.bridge}: bad subnet {s!r}: {e}") from None
        object.__setattr__(self, "subnets", tuple(subnets))
        try:
            object.__setattr__(self, "gateways", tuple(ipaddress.ip_address(g) for g in self.gateways))
        except ValueError as e:
            raise Invalid(f"firewall: network on {self.bridge}: bad gateway: {e}") from None


@dataclass(frozen=True)
class PortRule:
    """One published port: host [host_ip]:host_port/protocol -> container_ip:container_port."""

    endpoint_id: str
    protocol: str
    host_ip: str  # '' = any local address of the container address's family
    host_port: int
    container_ip: IPAddress
    container_port: int
    bridge: str

    def __post_init__(self) -> None:
        if not self.endpoint_id:
            raise Invalid("firewall: port mapping without an endpoint id")
        proto = str(self.protocol).lower()
        if proto not in PROTOCOLS:
            raise Invalid(f"firewall: port mapping of {self.endpoint_id}: protocol {self.protocol!r} "
                          f"is not one of {', '.join(PROTOCOLS)}")
        object.__setattr__(self, "protocol", proto)
        for name in ("host_port", "container_port"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
                raise Invalid(f"firewall: port mapping of {self.endpoint_id}: {name} {v!r} "
                              "is not a port number in 1-65535")
        try:
            cip = ipaddress.ip_address(self.container_ip)
        except ValueError:
            raise Invalid(f"firewall: port mapping of {self.endpoint_id}: container_ip "
                          f"{self.container_ip!r} is not an IP address") from None
        object.__setattr__(self, "container_ip", cip)
        if self.host_ip:
            try:
                hip = ipaddress.ip_address(self.host_ip)
            except ValueError:
                raise Invalid(f"firewall: port mapping of {self.endpoint_id}: host_ip "
                              f"{self.host_ip!r} is not an IP address") from None
            if hip.version != cip.version:
                raise Invalid(f"firewall: port mapping of {self.endpoint_id}: host_ip {hip} and "
                              f"container_ip {cip} are of different IP families")
            if hip.is_unspecified:
                hip_s = ""
            else:
                hip_s = str(hip)
            object.__setattr__(self, "host_ip", hip_s)
        check_ifname(self.bridge)

    @property
    def family(self) -> int:
        return self.container_ip.version


@dataclass(frozen=True)
class FirewallState:
    networks: tuple[NetRule, ...] = ()
    ports: tuple[PortRule, ...] = ()
    hold: bool = False  # keep the table (and its owner mark) while the owner has any network
    # network policy (firewall/policy.py) and anti-spoofing (firewall/antispoof.py)
    policy: PolicyInput = field(default_factory=PolicyInput)
    guards: tuple[Guard, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "networks", tuple(self.networks))
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "guards", tuple(self.guards))

    @property
    def empty(self) -> bool:
        return not self.networks and not self.ports and not self.hold

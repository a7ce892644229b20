"""When two published ports clash (pure): the same protocol and host port on host addresses
that overlap (one of them any address, or the same address), in an IP family both use."""

from __future__ import annotations

import ipaddress
from typing import Iterable

from muslin.model.types import PortMapping


def families(p: PortMapping, address_versions: Iterable[int]) -> set[int]:
    """The IP families a mapping is published in: its host address's, else its container's."""
    if p.host_ip and not ipaddress.ip_address(p.host_ip).is_unspecified:
        return {ipaddress.ip_address(p.host_ip).version}
    return set(address_versions)


def host_addr(p: PortMapping) -> str:
    """'' for any address."""
    return "" if not p.host_ip or ipaddress.ip_address(p.host_ip).is_unspecified else str(ipaddress.ip_address(p.host_ip))


def clash(a: PortMapping, fa: set[int], b: PortMapping, fb: set[int]) -> bool:
    if a.protocol.lower() != b.protocol.lower() or a.host_port != b.host_port or not fa & fb:
        return False
    ha, hb = host_addr(a), host_addr(b)
    return not ha or not hb or ha == hb


def describe(p: PortMapping) -> str:
    h = host_addr(p)
    where = (f"[{h}]" if ":" in h else h) if h else "*"
    return f"{where}:{p.host_port}/{p.protocol}"

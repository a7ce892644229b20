"""Deterministic kernel object names, so cleanup after a crash needs no record."""

from __future__ import annotations

import hashlib
import re

IFNAME_MAX = 15
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


def _digest(*parts: str, n: int = 11) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:n]


def host_ifname(network: str, endpoint_id: str) -> str:
    """Host end of an endpoint's veth pair: 'mv' + 11 hex digits."""
    return "mv" + _digest(network, endpoint_id)


def peer_ifname(network: str, endpoint_id: str) -> str:
    """Sandbox end while it still lives on the host (Docker moves it later)."""
    return "mp" + _digest(network, endpoint_id)


def bridge_name(network: str) -> str:
    """Default bridge of a network: 'mus-NAME' when it fits, else a hash."""
    name = f"mus-{network}"
    if len(name) <= IFNAME_MAX and re.fullmatch(r"[a-zA-Z0-9_.\-]+", name):
        return name
    return "mus-" + _digest(network, n=10)


def check_ifname(name: str, what: str = "interface name") -> None:
    from muslin.model.errors import Invalid

    if not name or len(name.encode()) > IFNAME_MAX or name in (".", "..") or re.search(r"[/:\s]", name):
        raise Invalid(f"{what} {name!r} is not a valid Linux interface name (1-15 bytes, no '/', ':' or spaces)")


def check_name(name: str, what: str = "network name") -> None:
    from muslin.model.errors import Invalid

    if not NAME_RE.match(name or ""):
        raise Invalid(f"{what} {name!r} is invalid: use letters, digits, '_', '.', '-' (not first)")


def store_id(endpoint_id: str) -> str:
    """An endpoint id usable as one store key segment."""
    return endpoint_id.replace("%", "%25").replace("/", "%2F")

"""Deterministic kernel object names, so cleanup after a crash needs no record."""

from __future__ import annotations

import hashlib
import re

IFNAME_MAX = 15
# Validators use fullmatch: with re.match, `$` also matches before a trailing newline ("abc\n").
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


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

    if (not isinstance(name, str) or not name or len(name.encode()) > IFNAME_MAX or name in (".", "..")
            or re.search(r"[/:\s]", name) or not name.isprintable()):
        raise Invalid(f"{what} {name!r} is not a valid Linux interface name (1-15 bytes, no '/', ':', "
                      f"spaces or control characters)")


def check_name(name: str, what: str = "network name") -> None:
    from muslin.model.errors import Invalid

    if not NAME_RE.fullmatch(name or ""):
        raise Invalid(f"{what} {name!r} is invalid: use letters, digits, '_', '.', '-' (not first)")


# Link names Muslin puts into its nft sets (bridges): characters that need no escaping in
# an nft string (firewall/state.py checks the same); the kernel's 15-byte limit.
BRIDGE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,15}")


def check_bridge_name(name: str, what: str = "bridge name") -> None:
    from muslin.model.errors import Invalid

    if not isinstance(name, str) or BRIDGE_RE.fullmatch(name) is None or name in (".", ".."):
        raise Invalid(f"{what} {name!r} is not valid: use 1-15 letters, digits, '_', '.' or '-'")


def valid_name(name: str) -> bool:
    """A network name / container id as libcni accepts it: ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ (whole string)."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def check_mac(mac: str, what: str = "MAC address") -> str:
    """A unicast, non-zero Ethernet address 'xx:xx:xx:xx:xx:xx'; returns it lower-case.
    Raises Invalid naming `what` (the option or key it came from)."""
    from muslin.model.errors import Invalid

    if not isinstance(mac, str) or MAC_RE.fullmatch(mac) is None:
        raise Invalid(f"{what} {mac!r} is not a MAC address (six hex pairs like 02:42:0a:00:00:05)")
    if int(mac[:2], 16) & 1:
        raise Invalid(f"{what} {mac} is a multicast MAC address: an interface needs a unicast one "
                      f"(the first byte must be even, like 02)")
    if mac == "00:00:00:00:00:00":
        raise Invalid(f"{what} {mac} is the all-zero MAC address: an interface needs a real one")
    return mac.lower()


def store_id(endpoint_id: str) -> str:
    """An endpoint id usable as one store key segment."""
    return endpoint_id.replace("%", "%25").replace("/", "%2F")

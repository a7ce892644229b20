"""Names: the one set of validators (names, interface names, MACs) and the deterministic
kernel object names, so cleanup after a crash needs no record.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from muslin.model.errors import Invalid

IFNAME_MAX = 15
# Validators use fullmatch: with re.match, `$` also matches before a trailing newline ("abc\n").
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
ALIAS_PREFIX = "muslin:"  # IFLA_IFALIAS of the bridges Muslin makes: muslin:<network>
# IFLA_GROUP of the links muslind retired (off their bridge, down) and deletes later, all
# at once: one RTM_DELLINK of a group costs one synchronous rcu_barrier, whatever its size.
REAP_GROUP = 0x6D75736C  # "musl"


def _digest(*parts: str, n: int = 11) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:n]


def host_ifname(network: str, endpoint_id: str) -> str:
    """Host end of an endpoint's veth pair: 'mv' + 11 hex digits."""
    return "mv" + _digest(network, endpoint_id)


def peer_ifname(network: str, endpoint_id: str) -> str:
    """Sandbox end while it still lives on the host (Docker moves it later)."""
    return "mp" + _digest(network, endpoint_id)


def ifb_name(network: str, endpoint_id: str) -> str:
    """The ifb carrying an endpoint's egress limit: 'mb' + 11 hex digits."""
    return "mb" + _digest(network, endpoint_id)


def bridge_name(network: str) -> str:
    """Default bridge of a network: 'mus-NAME' when it fits, else a hash."""
    name = f"mus-{network}"
    if len(name) <= IFNAME_MAX and re.fullmatch(r"[a-zA-Z0-9_.\-]+", name):
        return name
    return "mus-" + _digest(network, n=10)


def bridge_alias(network: str) -> str:
    """The mark on a bridge Muslin made for `network` (kept in the kernel: survives a crash)."""
    return ALIAS_PREFIX + network


def random_mac() -> str:
    """A random locally administered unicast MAC (02:xx:...)."""
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def check_ifname(name: str, what: str = "interface name") -> str:
    if (not isinstance(name, str) or not name or len(name.encode()) > IFNAME_MAX or name in (".", "..")
            or re.search(r"[/:\s]", name) or not name.isprintable()):
        raise Invalid(f"{what} {name!r} is not a valid Linux interface name (1-15 bytes, no '/', ':', "
                      f"spaces or control characters)")
    return name


# Link names Muslin puts into its nft sets (bridges): characters that need no escaping in
# an nft string (firewall/state.py checks the same); the kernel's 15-byte limit.
BRIDGE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,15}")


def check_bridge_name(name: str, what: str = "bridge name") -> str:
    if not isinstance(name, str) or BRIDGE_RE.fullmatch(name) is None or name in (".", ".."):
        raise Invalid(f"{what} {name!r} is not a valid interface name here: use 1-15 letters, digits, '_', '.' or '-'")
    return name


def valid_name(name: str) -> bool:
    """A network name / container id as libcni accepts it: ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ (whole string)."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def check_name(name: str, what: str = "network name", max_len: int = 0) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or (max_len and len(name) > max_len):
        most = f" (at most {max_len})" if max_len else ""
        raise Invalid(f"{what} {name!r} is invalid: use letters, digits, '_', '.', '-' (not first){most}")
    return name


def check_mac(mac: str, what: str = "MAC address") -> str:
    """A unicast MAC in lower case; Invalid (one line) for anything else."""
    if not isinstance(mac, str) or not MAC_RE.fullmatch(mac):
        raise Invalid(f"{what} {mac!r} is not a MAC address (like 02:42:0a:00:00:05)")
    if int(mac[:2], 16) & 1:
        raise Invalid(f"{what} {mac} is a multicast MAC address")
    if mac == "00:00:00:00:00:00":
        raise Invalid(f"{what} {mac} is the all-zero MAC address")
    return mac.lower()


# -- who an endpoint is: DNS names, labels, namespaces ---------------------------------

DNS_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
LABEL_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
LABEL_VALUE_MAX = 63
NAMESPACE_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def is_dns_name(name: str) -> bool:
    """A name DNS can serve: dot-separated labels of letters, digits, '_' and '-' (not at
    either end), each 1-63 bytes, 253 in all; not all digits (it would read as an address)."""
    if not isinstance(name, str) or not 0 < len(name) <= 253 or name.endswith("."):
        return False
    parts = name.split(".")
    return all(DNS_LABEL_RE.fullmatch(p) for p in parts) and not all(p.isdigit() for p in parts)


def check_dns_name(name: str, what: str = "alias") -> str:
    if not is_dns_name(name):
        raise Invalid(f"{what} {name!r} is not a DNS name (labels of letters, digits, '_', '-', "
                      "1-63 characters each, 253 in all, separated by '.')")
    return name


def is_label_key(key: str) -> bool:
    """Kubernetes' label key: [prefix/]name, prefix a DNS subdomain of up to 253 bytes,
    name 1-63 of letters, digits, '-', '_', '.' beginning and ending with a letter or digit."""
    if not isinstance(key, str):
        return False
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(DNS_LABEL_RE.fullmatch(p) for p in prefix.split("."))):
        return False
    return bool(LABEL_NAME_RE.fullmatch(name))


def is_label_value(value: str) -> bool:
    return isinstance(value, str) and (value == "" or (len(value) <= LABEL_VALUE_MAX
                                                        and bool(LABEL_NAME_RE.fullmatch(value))))


def check_label(key: str, value: str, what: str = "label") -> tuple[str, str]:
    if not is_label_key(key):
        raise Invalid(f"{what} key {key!r} is invalid: [prefix/]name, name 1-63 letters, digits, '-', '_', '.' "
                      "beginning and ending with a letter or digit")
    if not is_label_value(value):
        raise Invalid(f"{what} {key}={value!r}: the value must be empty or 1-63 letters, digits, '-', '_', '.' "
                      "beginning and ending with a letter or digit")
    return key, value


def parse_label_changes(items: tuple[str, ...] | list[str], what: str = "label") -> tuple[dict[str, str], list[str]]:
    """'k=v' sets k, 'k-' removes k (kubectl's syntax): (to set, to remove)."""
    sets: dict[str, str] = {}
    drops: list[str] = []
    for item in items:
        if "=" in item:
            k, v = item.split("=", 1)
            check_label(k, v, what)
            sets[k] = v
        elif item.endswith("-") and is_label_key(item[:-1]):
            drops.append(item[:-1])
        else:
            raise Invalid(f"{what} {item!r}: use KEY=VALUE to set a label or KEY- to remove it")
    both = set(sets) & set(drops)
    if both:
        raise Invalid(f"{what} {sorted(both)[0]!r} is both set and removed")
    return sets, drops


def check_namespace(ns: str) -> str:
    if not isinstance(ns, str) or not NAMESPACE_RE.fullmatch(ns):
        raise Invalid(f"namespace {ns!r} is invalid: 1-63 lower-case letters, digits and '-' "
                      "beginning and ending with a letter or digit")
    return ns

"""Anti-spoofing: Muslin's bridge-family table `bridge muslin` (pure).

A guarded endpoint's frames, as they enter the bridge from the host end of its veth (the
bridge family's `iifname` is that port), must carry its own MAC as the Ethernet source, and
its packets one of its own addresses as the source: IPv4 (ARP: sender MAC and address,
0.0.0.0 for a probe) and IPv6 (also link-local and :: for neighbour discovery and duplicate
address detection); a neighbour advertisement may only announce one of its own addresses (or
a link-local one); router advertisements and redirects are dropped. What the reference bridge
plugin calls `macspoofchk`, plus the same for IP and ARP/NDP.

Everything per endpoint is an element of a set keyed by the host interface name, so the
rules are fixed and a new endpoint is a few `add element`s. Frames of ports that are not
guarded (the host's uplinks, other software's veths) leave at the first rule.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Iterable

from muslin.model.errors import Invalid
from muslin.model.names import check_bridge_name, check_mac
from muslin.model.types import IPAddress

FAMILY = "bridge"
TABLE = "muslin"

SETS: tuple[tuple[str, str], ...] = (
    ("guarded", "type ifname"),
    ("macs", "type ifname . ether_addr"),
    ("addrs4", "type ifname . ipv4_addr"),
    ("addrs6", "type ifname . ipv6_addr"),
    # the target of a neighbour advertisement (ICMPv6 bytes 8-23), as a 128-bit integer
    ("targets6", "typeof iifname . @th,64,128"),
)
SET_NAMES = tuple(n for n, _ in SETS)
# How `nft -j` shows each declaration (typeof sets show their types).
SHOWN = {"targets6": "type ifname . integer"}

CHAINS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("prerouting", "type filter hook prerouting priority -200; policy accept;", (
        "iifname != @guarded return",
        "iifname . ether saddr != @macs counter drop",
        "ether type vlan counter drop",
        "ether type arp iifname . arp saddr ether != @macs counter drop",
        "ether type arp arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @addrs4 counter drop",
        "ether type ip iifname . ip saddr != @addrs4 counter drop",
        "ether type ip6 ip6 saddr != { ::, fe80::/10 } iifname . ip6 saddr != @addrs6 counter drop",
        "icmpv6 type { nd-router-advert, nd-redirect } counter drop",
        "icmpv6 type nd-neighbor-advert @th,64,10 != 0x3fa iifname . @th,64,128 != @targets6 counter drop",
    )),
)


def _source() -> str:
    return "\n".join([f"set {n} {{ {d}; }}" for n, d in SETS] +
                     [f"chain {n} {{ {h} {' ; '.join(r)} }}" for n, h, r in CHAINS])


DIGEST = hashlib.sha256(_source().encode()).hexdigest()[:16]
RULE_COMMENT = f"muslin-guard {DIGEST}"


def _render_skeleton() -> str:
    lines = [f"table {FAMILY} {TABLE} {{"]
    for name, decl in SETS:
        lines.append(f"\tset {name} {{")
        lines += [f"\t\t{part}" for part in decl.split("; ")]
        lines.append("\t}")
    for name, head, rules in CHAINS:
        lines.append(f"\tchain {name} {{")
        lines.append(f"\t\t{head}")
        lines += [f'\t\t{r} comment "{RULE_COMMENT}"' for r in rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


SKELETON = _render_skeleton()


@dataclass(frozen=True)
class Guard:
    """One endpoint's host-side interface and what it may send from."""

    ifname: str
    mac: str
    addresses: tuple[IPAddress, ...] = ()

    def __post_init__(self) -> None:
        try:
            check_bridge_name(self.ifname, "guarded interface name")
            object.__setattr__(self, "mac", check_mac(self.mac, f"MAC of {self.ifname}"))
        except Invalid as e:
            raise Invalid(f"anti-spoofing: {e.message}") from None
        object.__setattr__(self, "addresses", tuple(ipaddress.ip_address(a) for a in self.addresses))


def target_elem(ifname: str, addr: ipaddress.IPv6Address) -> str:
    return f'"{ifname}" . 0x{int(addr):032x}'


def guard_elements(guards: Iterable[Guard]) -> dict[str, set[str]]:
    els: dict[str, set[str]] = {n: set() for n in SET_NAMES}
    for g in guards:
        i = f'"{g.ifname}"'
        els["guarded"].add(i)
        els["macs"].add(f"{i} . {g.mac}")
        for a in g.addresses:
            if a.version == 4:
                els["addrs4"].add(f"{i} . {a}")
            else:
                els["addrs6"].add(f"{i} . {a}")
                els["targets6"].add(target_elem(g.ifname, a))  # type: ignore[arg-type]
    return els


@dataclass(frozen=True)
class GuardRuleset:
    skeleton: str = SKELETON
    elements: Mapping[str, frozenset[str]] = field(default_factory=dict)
    digest: str = DIGEST

    def __post_init__(self) -> None:
        object.__setattr__(self, "elements", {n: frozenset(self.elements.get(n, ())) for n in SET_NAMES})

    def same_skeleton(self, other: GuardRuleset) -> bool:
        return self.digest == other.digest and self.skeleton == other.skeleton


def compile_guards(guards: Iterable[Guard]) -> GuardRuleset:
    return GuardRuleset(elements={k: frozenset(v) for k, v in guard_elements(guards).items()})


def _lines(verb: str, name: str, elems: Iterable[str], chunk: int = 256) -> list[str]:
    items = sorted(elems)
    return [f"{verb} element {FAMILY} {TABLE} {name} {{ {', '.join(items[i:i + chunk])} }}"
            for i in range(0, len(items), chunk)]


def render_full(rs: GuardRuleset) -> str:
    out = [f"table {FAMILY} {TABLE} {{}}", f"delete table {FAMILY} {TABLE}"]
    text = "\n".join(out) + "\n" + rs.skeleton
    for name in SET_NAMES:
        text += "".join(line + "\n" for line in _lines("add", name, rs.elements[name]))
    return text


def render_delta(old: GuardRuleset, new: GuardRuleset) -> str:
    dels, adds = [], []
    for name in SET_NAMES:
        dels += _lines("delete", name, old.elements[name] - new.elements[name])
        adds += _lines("add", name, new.elements[name] - old.elements[name])
    return "".join(line + "\n" for line in dels + adds)


def render_change(add: Iterable[Guard], remove: Iterable[Guard]) -> str:
    """One endpoint's elements in or out, without knowing what the table holds: a removal is
    `add` then `delete` (so a missing element is no error), additions last (an endpoint
    removed and added again in one change keeps its elements)."""
    gone = guard_elements(remove)
    new = guard_elements(add)
    lines: list[str] = []
    for name in SET_NAMES:
        lines += _lines("add", name, gone[name])
        lines += _lines("delete", name, gone[name])
    for name in SET_NAMES:
        lines += _lines("add", name, new[name])
    return "".join(line + "\n" for line in lines)


def render_delete() -> str:
    return f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"

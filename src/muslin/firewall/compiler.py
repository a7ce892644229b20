"""Compile a FirewallState into Muslin's one nftables table (pure).

The table `inet muslin` has a fixed skeleton: static chains whose rules refer only to
named sets and maps. Everything per network and per endpoint is a set/map element, so
adding the 1000th endpoint costs what adding the first did (a few `add element`s).

What the rules do (IPv4 and IPv6):
- forward: nothing leaves or enters an internal network's bridge from another interface;
  traffic between two different Muslin bridges is dropped when either side isolates
  (unless it is a DNATed connection to a published port); everything else to/from a
  Muslin bridge is accepted here (a drop in another table still wins).
- port mappings: for local destinations (`fib daddr type local`) in prerouting (outside
  and containers) and output (the host itself, 127.0.0.1 included) a lookup of
  `l4proto . dport` (any host address) or `daddr . l4proto . dport` (one host address)
  gives the container address and port to DNAT to.
- postrouting: DNATed connections to a mapped container that come from a Muslin subnet
  (hairpin) or from loopback (127.0.0.1:hostport on the host) are masqueraded, so the
  reply comes back through the host; traffic from a masquerading network's subnet that
  leaves through any interface other than its own bridge is masqueraded (not multicast).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from muslin.firewall import policy
from muslin.firewall import services as svc
from muslin.firewall.state import FirewallState, PortRule
from muslin.model.errors import Conflict
from muslin.model.types import IPNetwork

FAMILY = "inet"
TABLE = "muslin"

# name -> declaration (without elements). Order is the order they are rendered in.
SETS: tuple[tuple[str, str], ...] = (
    ("bridges", "type ifname"),
    ("pairs", "type ifname . ifname"),
    ("isolated", "type ifname"),
    ("internal", "type ifname"),
    ("nets4", "type ipv4_addr; flags interval"),
    ("nets6", "type ipv6_addr; flags interval"),
    ("masq4", "type ipv4_addr; flags interval"),
    ("masq6", "type ipv6_addr; flags interval"),
    ("own4", "type ipv4_addr . ifname; flags interval"),
    ("own6", "type ipv6_addr . ifname; flags interval"),
    ("mapped4", "type ipv4_addr"),
    ("mapped6", "type ipv6_addr"),
    ("gws4", "type ipv4_addr"),
    ("gws6", "type ipv6_addr"),
) + policy.SETS  # network policy's sets (firewall/policy.py)
MAPS: tuple[tuple[str, str], ...] = (
    ("ports4", "type inet_proto . inet_service : ipv4_addr . inet_service"),
    ("ports6", "type inet_proto . inet_service : ipv6_addr . inet_service"),
    ("hostports4", "type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service"),
    ("hostports6", "type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service"),
) + policy.MAPS  # network policy's maps (firewall/policy.py)
SET_NAMES: tuple[str, ...] = tuple(n for n, _ in SETS + MAPS)
MAP_NAMES: frozenset[str] = frozenset(n for n, _ in MAPS)
# Declared with the skeleton, their elements kept by the services' own sync (firewall/services.py):
DECLARED_SETS = SETS + svc.SERVICE_SETS
DECLARED_MAPS = MAPS + svc.SERVICE_MAPS

_NOT_SELF = "iifname . oifname != @pairs"
# chain name -> (base chain header or "", rules)
CHAINS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # Same-subnet traffic on one bridge needs no connection tracking (nothing NATs or
    # filters it by state): untracked, it costs a set lookup instead of a conntrack entry.
    # Traffic to the gateway (the host: DNAT of published ports, DNS) stays tracked.
    ("raw", "type filter hook prerouting priority raw; policy accept;", policy.RAW_RULES + (  # policed: tracked
        *svc.RAW_RULES,  # a service backend's replies stay tracked (the reverse NAT needs it)
        "ip daddr . iifname @own4 ip saddr . iifname @own4 ip daddr != @gws4 notrack",
        "ip6 daddr . iifname @own6 ip6 saddr . iifname @own6 ip6 daddr != @gws6 notrack",
    )),
    ("forward", "type filter hook forward priority filter; policy accept;", policy.FORWARD_RULES + (
        # the common case first: within one bridge (bridged, through br_netfilter)
        "iifname . oifname @pairs accept",
        f"iifname @internal {_NOT_SELF} drop",
        f"oifname @internal {_NOT_SELF} drop",
        "ct status dnat oifname @bridges accept",
        f"iifname @isolated oifname @bridges {_NOT_SELF} drop",
        f"oifname @isolated iifname @bridges {_NOT_SELF} drop",
        "iifname @bridges accept",
        "oifname @bridges accept",
    )),
    ("portmap", "", (
        "dnat ip to ip daddr . meta l4proto . th dport map @hostports4",
        "dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostports6",
        "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports4",
        "meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @ports6",
    )),
    ("prerouting", "type nat hook prerouting priority dstnat; policy accept;", (
        "fib daddr type local jump portmap",
    )),
    ("output", "type nat hook output priority -100; policy accept;", (
        "fib daddr type local jump portmap",
    )),
    ("postrouting", "type nat hook postrouting priority srcnat; policy accept;", (
        "ct status dnat ip daddr @mapped4 ip saddr @nets4 masquerade",
        "ct status dnat ip daddr @mapped4 ip saddr 127.0.0.0/8 masquerade",
        "ct status dnat ip6 daddr @mapped6 ip6 saddr @nets6 masquerade",
        "ip saddr @masq4 ip daddr != 224.0.0.0/4 ip saddr . oifname != @own4 masquerade",
        "ip6 saddr @masq6 ip6 daddr != ff00::/8 ip6 saddr . oifname != @own6 masquerade",
    )),
    *svc.SERVICE_CHAINS,  # service virtual IPs (firewall/services.py)
) + policy.CHAINS  # network policy's chains (firewall/policy.py)


def _skeleton_source() -> str:
    out = []
    for name, decl in DECLARED_SETS:
        out.append(f"set {name} {{ {decl}; }}")
    for name, decl in DECLARED_MAPS:
        out.append(f"map {name} {{ {decl}; }}")
    for name, head, rules in CHAINS:
        out.append(f"chain {name} {{ {head} {' ; '.join(rules)} }}")
    return "\n".join(out)


DIGEST = hashlib.sha256(_skeleton_source().encode()).hexdigest()[:16]
# Every rule carries this comment: observe() reads it back to tell whether the kernel's
# skeleton is the one this code would write (a changed rule set, or a rule added or removed
# by hand, shows as a mismatch and leads to a full replace).
RULE_COMMENT = f"muslin {DIGEST}"

# The owner mark: one state dir per host namespace. The table carries its owner as the
# comment of the one rule of the (unreferenced) chain `owner`; another state dir's sync is
# refused instead of rewriting what is not its own.
OWNER_CHAIN = "owner"
COMMENT_MAX = 128  # nft's limit on a rule comment


def owner_mark(state_dir: str) -> str:
    """The owner text for a state dir: 'muslin-owner <12 hex of sha256(path)> <path...>'."""
    digest = hashlib.sha256(state_dir.encode()).hexdigest()[:12]
    shown = "".join(c if c.isprintable() and c not in '"\\' else "?" for c in state_dir)
    return f"muslin-owner {digest} {shown}"[:COMMENT_MAX]


def same_owner(a: str, b: str) -> bool:
    return a.split(" ")[:2] == b.split(" ")[:2]


def owner_path(mark: str) -> str:
    """The state dir a mark names (possibly truncated)."""
    parts = mark.split(" ", 2)
    return parts[2] if len(parts) == 3 else mark


def _render_skeleton() -> str:
    lines = [f"table {FAMILY} {TABLE} {{"]
    for kind, items in (("set", DECLARED_SETS), ("map", DECLARED_MAPS)):
        for name, decl in items:
            lines.append(f"\t{kind} {name} {{")
            for part in decl.split("; "):
                lines.append(f"\t\t{part}")
            lines.append("\t}")
    for name, head, rules in CHAINS:
        lines.append(f"\tchain {name} {{")
        if head:
            lines.append(f"\t\t{head}")
        for r in rules:
            lines.append(f'\t\t{r} comment "{RULE_COMMENT}"')
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


SKELETON = _render_skeleton()


def expected_shape() -> dict[str, object]:
    """What observe() must find for the skeleton to count as ours and current."""
    return {
        "sets": {name: decl for name, decl in DECLARED_SETS + DECLARED_MAPS},
        "chains": {name: len(rules) for name, _, rules in CHAINS},
    }


@dataclass(frozen=True)
class Ruleset:
    """The skeleton text plus the elements of every set/map (canonical nft text)."""

    skeleton: str = SKELETON
    elements: Mapping[str, frozenset[str]] = field(default_factory=dict)
    digest: str = DIGEST
    owner: str = ""  # owner_mark() of the state dir the table belongs to ("" = unmarked)

    def __post_init__(self) -> None:
        els = {name: frozenset(self.elements.get(name, ())) for name in SET_NAMES}
        unknown = set(self.elements) - set(SET_NAMES)
        if unknown:
            raise ValueError(f"unknown sets {sorted(unknown)}")
        object.__setattr__(self, "elements", els)

    def same_skeleton(self, other: Ruleset) -> bool:
        return self.digest == other.digest and self.skeleton == other.skeleton


# ---- canonical element text (must match what dataplane.nft parses back from nft -j) ----

def ifname_elem(name: str) -> str:
    return f'"{name}"'


def net_elem(net: IPNetwork) -> str:
    # nft prints a host prefix (/32, /128) in an interval set as the bare address.
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _port_key(p: PortRule) -> str:
    k = f"{p.protocol} . {p.host_port}"
    return f"{p.host_ip} . {k}" if p.host_ip else k


def _port_value(p: PortRule) -> str:
    return f"{p.container_ip} . {p.container_port}"


def compile(state: FirewallState, owner: str = "") -> Ruleset:  # noqa: A001 - the contract's name
    els: dict[str, set[str]] = {name: set() for name in SET_NAMES}
    seen_bridges: dict[str, tuple[bool, bool, bool]] = {}
    all_nets: dict[IPNetwork, str] = {}
    for n in state.networks:
        flags = (n.masquerade, n.internal, n.isolate)
        if seen_bridges.setdefault(n.bridge, flags) != flags:
            raise Conflict(f"firewall: bridge {n.bridge} is listed twice with different "
                           "masquerade/internal/isolate settings")
        br = ifname_elem(n.bridge)
        els["bridges"].add(br)
        els["pairs"].add(f"{br} . {br}")
        if n.isolate:
            els["isolated"].add(br)
        if n.internal:
            els["internal"].add(br)
        for s in n.subnets:
            for other, obr in all_nets.items():
                if other != s and other.version == s.version and other.overlaps(s):
                    raise Conflict(f"firewall: subnet {s} on {n.bridge} overlaps {other} on {obr}")
            all_nets.setdefault(s, n.bridge)
            v = s.version
            e = net_elem(s)
            els[f"nets{v}"].add(e)
            els[f"own{v}"].add(f"{e} . {br}")
            if n.masquerade and not n.internal:
                els[f"masq{v}"].add(e)
        for g in n.gateways:
            els[f"gws{g.version}"].add(str(g))
    keys: dict[tuple[str, str], tuple[str, PortRule]] = {}
    for p in state.ports:
        v = p.family
        mapname = f"hostports{v}" if p.host_ip else f"ports{v}"
        key, value = _port_key(p), _port_value(p)
        prev = keys.setdefault((mapname, key), (value, p))
        if prev[0] != value:
            where = f"{p.host_ip or ('0.0.0.0' if v == 4 else '[::]')}:{p.host_port}/{p.protocol}"
            raise Conflict(f"firewall: host port {where} is mapped twice "
                           f"({prev[1].endpoint_id} and {p.endpoint_id})")
        els[mapname].add(f"{key} : {value}")
        els[f"mapped{v}"].add(str(p.container_ip))
    for name, elems in policy.elements(state.policy).items():
        els[name] |= elems
    return Ruleset(elements={k: frozenset(v) for k, v in els.items()}, owner=owner)


def sysctls_for(state: FirewallState) -> dict[str, str]:
    """Sysctls (absolute /proc/sys paths -> value) the state needs; the dataplane sets them.

    - forwarding on, for each IP family a non-internal network uses;
    - route_localnet=1 on each bridge with an IPv4 port mapping, so 127.0.0.1:hostport on
      the host can be DNATed out of the bridge (and its replies accepted back).
    """
    out: dict[str, str] = {}
    for n in state.networks:
        if n.internal:
            continue
        versions = {s.version for s in n.subnets}
        if 4 in versions:
            out["/proc/sys/net/ipv4/ip_forward"] = "1"
        if 6 in versions:
            out["/proc/sys/net/ipv6/conf/all/forwarding"] = "1"
    for p in state.ports:
        if p.family == 4:
            out["/proc/sys/net/ipv4/ip_forward"] = "1"
            out[f"/proc/sys/net/ipv4/conf/{p.bridge}/route_localnet"] = "1"
        else:
            out["/proc/sys/net/ipv6/conf/all/forwarding"] = "1"
    out.update(policy.sysctls(state.policy))
    return dict(sorted(out.items()))


def key_of(set_name: str, elem: str) -> str:
    """The key part of an element (maps: before ' : '), as `delete element` wants it."""
    return elem.split(" : ", 1)[0] if set_name in MAP_NAMES else elem

"""Network policy compiled to set elements of Muslin's table (pure).

Rules never name an endpoint or a policy: the chains below are fixed, and everything a
policy says becomes elements of the sets they consult, so the ruleset's rule count does not
depend on the number of endpoints or policies, and a new connection costs a fixed number of
set lookups (hash sets for endpoint peers, interval sets for ipBlocks and port ranges).

Local endpoints isolated in a direction are grouped into classes: those isolated by the
same policies (and, for ingress, declaring the same named ports) are allowed the same peers,
so a class's allowed peers are written once, not once per endpoint. A class is a number
(`class_ids`, stable across compiles: a hash of what defines it); the chain first looks up
the local address's class into the packet's priority, then the (class, peer, port) sets:
- {d}_id{4,6}      map: local address -> its class
- {d}_peer{4,6}    class . P . proto . port      P an endpoint's address, one port
- {d}_peerall{4,6} class . P                     P an endpoint's address, any traffic
- {d}_net{4,6}     class . CIDR . proto . ports  an ipBlock piece, "from anywhere", a port range
- {d}_netall{4,6}  class . CIDR                  the same, any traffic
- {d}_self{4,6}    A . A                         an endpoint to itself (never blocked)
with d = in (keyed by the destination) or eg (by the source). At 1,000 endpoints in 50
classes, each allowed 120 peers, that is 6,000 peer elements, not 120,000 pairs.
pol_in / pol_eg hold the isolated local addresses, pol their union (tracked even within one
bridge: the raw chain's notrack and the forward chain's same-bridge accept skip them),
in_drop / eg_drop the same addresses with a counter each: the packets dropped at that
endpoint.

The packet's priority (skb->priority, `meta priority`: a classid, which the egress qdisc may
read, and nothing on a forwarded packet sets unless a rule or a sender's SO_PRIORITY does) is
the chains' scratch register, not the mark, which routing, masquerade and other firewalls
(kube-proxy) use: the first packet of a new connection to or from an isolated endpoint leaves
the policy chains with priority 0 ("none"), whatever an earlier hook gave it.

What passes, as in Kubernetes: replies of allowed connections (conntrack), traffic between an
endpoint and its own host (it never crosses the forward hook), an endpoint to itself, and
IPv6 neighbour discovery. Named ports are resolved on the endpoint that declares them: the
destination (ingress: the local endpoint, hence in its class; egress: the peer).

`evaluate()` is the same semantics written directly over the policies (no sets): `explain`
uses it.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Mapping

from muslin.model.policy import NAME_LABEL, Namespace, NetworkPolicy, Peer, PolicyPort, Rule
from muslin.model.types import IPAddress, IPNetwork

DIRECTIONS = ("in", "eg")
FAMILIES = (4, 6)


def _sets() -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for v in FAMILIES:
        a = f"ipv{v}_addr"
        out += [(f"pol{v}", f"type {a}"), (f"pol_in{v}", f"type {a}"), (f"pol_eg{v}", f"type {a}")]
        for d in DIRECTIONS:
            out += [(f"{d}_peer{v}", f"type classid . {a} . inet_proto . inet_service"),
                    (f"{d}_peerall{v}", f"type classid . {a}"),
                    (f"{d}_net{v}", f"type classid . {a} . inet_proto . inet_service; flags interval"),
                    (f"{d}_netall{v}", f"type classid . {a}; flags interval"),
                    (f"{d}_self{v}", f"type {a} . {a}"),
                    (f"{d}_drop{v}", f"type {a}; counter")]
    return tuple(out)


def _maps() -> tuple[tuple[str, str], ...]:
    return tuple((f"{d}_id{v}", f"type ipv{v}_addr : classid") for v in FAMILIES for d in DIRECTIONS)


SETS = _sets()
MAPS = _maps()  # declared with the firewall's maps (compiler.py)
SET_NAMES = tuple(n for n, _ in SETS + MAPS)
COUNTER_SETS = tuple(n for n, decl in SETS if decl.endswith("counter"))

# The first rule of the forward chain, and the first rules of the raw chain (compiler.py).
FORWARD_RULES = ("jump netpol",)
RAW_RULES = ("ip saddr @pol4 return", "ip daddr @pol4 return", "ip6 saddr @pol6 return", "ip6 daddr @pol6 return")

_ND = "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } return"


_CLEAR = "meta priority set none"


def _check_chain(d: str) -> tuple[str, ...]:
    local, peer = ("daddr", "saddr") if d == "in" else ("saddr", "daddr")
    rules = ["ct state established,related return", _ND,
             f"ip {local} . ip {peer} @{d}_self4 return", f"ip6 {local} . ip6 {peer} @{d}_self6 return",
             _CLEAR, f"meta priority set ip {local} map @{d}_id4",
             f"meta priority set ip6 {local} map @{d}_id6"]
    for v, ip in ((4, "ip"), (6, "ip6")):
        rules += [f"meta priority . {ip} {peer} . meta l4proto . th dport @{d}_peer{v} {_CLEAR} return",
                  f"meta priority . {ip} {peer} @{d}_peerall{v} {_CLEAR} return",
                  f"meta priority . {ip} {peer} . meta l4proto . th dport @{d}_net{v} {_CLEAR} return",
                  f"meta priority . {ip} {peer} @{d}_netall{v} {_CLEAR} return"]
    rules += [f"ip {local} @{d}_drop4 drop", f"ip6 {local} @{d}_drop6 drop", "drop"]
    return tuple(rules)


CHAINS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("netpol", "", ("ip saddr @pol_eg4 jump netpol_egress", "ip6 saddr @pol_eg6 jump netpol_egress",
                    "ip daddr @pol_in4 jump netpol_ingress", "ip6 daddr @pol_in6 jump netpol_ingress")),
    ("netpol_egress", "", _check_chain("eg")),
    ("netpol_ingress", "", _check_chain("in")),
)

SYSCTLS = {"/proc/sys/net/bridge/bridge-nf-call-iptables": "1",
           "/proc/sys/net/bridge/bridge-nf-call-ip6tables": "1"}


# -- input ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyEndpoint:
    """An endpoint as policy sees it. `local`: on this host, where its traffic crosses this
    host's forward hook (a bridge network), so this host enforces its policies."""

    key: str
    namespace: str
    labels: tuple[tuple[str, str], ...] = ()
    addresses: tuple[IPAddress, ...] = ()
    ports: tuple[tuple[str, int, str], ...] = ()  # named ports it declares: (name, port, protocol)
    local: bool = True
    name: str = ""

    @cached_property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def port_number(self, name: str, protocol: str) -> int | None:
        for n, p, proto in self.ports:
            if n == name and proto == protocol:
                return p
        return None

    @property
    def shown(self) -> str:
        return f"{self.namespace}/{self.name or self.key}"


@dataclass(frozen=True)
class PolicyInput:
    policies: tuple[NetworkPolicy, ...] = ()
    namespaces: tuple[Namespace, ...] = ()  # those with labels (every namespace has its name label)
    endpoints: tuple[PolicyEndpoint, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.policies


# -- selection -----------------------------------------------------------------------------

class Selection:
    """Which endpoints each policy selects and each peer matches (cached per selector)."""

    def __init__(self, inp: PolicyInput) -> None:
        self.inp = inp
        ns_labels: dict[str, dict[str, str]] = {}
        for n in inp.namespaces:
            ns_labels[n.name] = n.label_map
        for e in inp.endpoints:
            ns_labels.setdefault(e.namespace, {NAME_LABEL: e.namespace})
        for p in inp.policies:
            ns_labels.setdefault(p.namespace, {NAME_LABEL: p.namespace})
        self.ns_labels = ns_labels
        self.by_ns: dict[str, list[PolicyEndpoint]] = defaultdict(list)
        for e in inp.endpoints:
            self.by_ns[e.namespace].append(e)
        self._peers: dict[tuple[Peer, str], list[PolicyEndpoint]] = {}

    def selected(self, p: NetworkPolicy) -> list[PolicyEndpoint]:
        return [e for e in self.by_ns.get(p.namespace, ()) if p.pod_selector.matches(e.label_map)]

    def peer_endpoints(self, peer: Peer, policy_ns: str) -> list[PolicyEndpoint]:
        key = (peer, policy_ns)
        if key not in self._peers:
            if peer.ip_block is not None:
                nets = peer.ip_block.networks()
                found = [e for e in self.inp.endpoints if any(a in n for a in e.addresses for n in nets
                                                              if a.version == n.version)]
            else:
                nss = [policy_ns] if peer.namespaces is None else \
                    sorted(n for n, labels in self.ns_labels.items() if peer.namespaces.matches(labels))
                found = [e for ns in nss for e in self.by_ns.get(ns, ())
                         if peer.pods is None or peer.pods.matches(e.label_map)]
            self._peers[key] = found
        return self._peers[key]


# -- compile ---------------------------------------------------------------------------------

ANY = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


def _net(n: IPNetwork) -> str:
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def _ports(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _port_ranges(pp: PolicyPort, target: PolicyEndpoint | None) -> tuple[int, int] | None:
    """The port range a PolicyPort allows on `target` (named ports resolved on it); None when
    it allows nothing there (a name the target does not declare)."""
    if pp.port is None:
        return (0, 65535)
    if isinstance(pp.port, str):
        n = target.port_number(pp.port, pp.protocol) if target is not None else None
        return (n, n) if n is not None else None
    return (pp.port, pp.end_port if pp.end_port is not None else pp.port)


@dataclass
class Compiled:
    elements: dict[str, set[str]] = field(default_factory=lambda: {n: set() for n in SET_NAMES})
    isolated: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # endpoint key -> dir -> policies
    classes: dict[tuple, int] = field(default_factory=dict)  # class key -> class id (classid() its text)


def class_key(d: str, policies: Iterable[str], local: PolicyEndpoint) -> tuple:
    """What the allowed peers of a local endpoint depend on in direction d: the policies
    isolating it, and (ingress: named ports resolve on it) the ports it declares."""
    return (d, tuple(policies), tuple(sorted(local.ports)) if d == "in" else ())


def class_ids(class_keys: Iterable[tuple]) -> dict[tuple, int]:
    """A 31-bit number per class (at least 0x10000: written as the classid major:minor, a
    major of 0 never), the same in every compile (a hash of the key; a collision takes the
    next free number, in the keys' sorted order)."""
    import hashlib

    out: dict[tuple, int] = {}
    used: set[int] = set()
    for key in sorted(set(class_keys)):
        n = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=4).digest(), "big") & 0x7FFFFFFF
        n |= 0x10000 if n < 0x10000 else 0  # a major of at least 1 (0:0 is "none", no class)
        while n in used:
            n = n + 1 if n < 0x7FFFFFFF else 0x10000
        used.add(n)
        out[key] = n
    return out


class Intervals:
    """The interval sets' elements of a compile, made disjoint before they are written: the
    kernel refuses an element whose start or end lies in another one of the same set (an
    ipBlock inside "anywhere", two overlapping port ranges), so per class and protocol the
    networks are cut into pieces no two of which overlap, each with the union of the port
    ranges of the networks that hold it. A piece of one address on one port goes to the
    hash sets instead (nft 1.0.6 cannot delete a classid-keyed interval element made only of
    single values)."""

    def __init__(self) -> None:
        self.boxes: dict[tuple[str, int, str, str], list[tuple[IPNetwork, int, int]]] = defaultdict(list)
        self.anys: dict[tuple[str, int, str], set[IPNetwork]] = defaultdict(set)

    def box(self, d: str, cid: str, proto: str, net: IPNetwork, ports: tuple[int, int]) -> None:
        self.boxes[(d, net.version, cid, proto)].append((net, ports[0], ports[1]))

    def any(self, d: str, cid: str, net: IPNetwork) -> None:
        self.anys[(d, net.version, cid)].add(net)

    def write(self, els: dict[str, set[str]]) -> None:
        for (d, v, cid), nets in self.anys.items():
            for n in ipaddress.collapse_addresses(sorted(nets)):  # type: ignore[type-var]
                host = n.prefixlen == n.max_prefixlen
                els[f"{d}_peerall{v}" if host else f"{d}_netall{v}"].add(f"{cid} . {_net(n)}")
        for (d, v, cid, proto), boxes in self.boxes.items():
            nets = {n for n, _, _ in boxes}
            for piece in _pieces(nets):
                ranges = sorted((lo, hi) for n, lo, hi in boxes if piece.subnet_of(n))  # type: ignore[arg-type]
                host = piece.prefixlen == piece.max_prefixlen
                for lo, hi in _merge(ranges):
                    if host and lo == hi:
                        els[f"{d}_peer{v}"].add(f"{cid} . {piece.network_address} . {proto} . {lo}")
                    else:
                        els[f"{d}_net{v}"].add(f"{cid} . {_net(piece)} . {proto} . {_ports(lo, hi)}")


def _pieces(nets: set[IPNetwork]) -> set[IPNetwork]:
    """Disjoint prefixes covering `nets` (of one family), each inside every net of `nets`
    that overlaps it (prefixes are nested or disjoint: each net less the nets inside it)."""
    out: set[IPNetwork] = set()
    for n in nets:
        pieces = [n]
        for m in nets:
            if m == n or not m.subnet_of(n):  # type: ignore[arg-type]
                continue
            nxt: list[IPNetwork] = []
            for q in pieces:
                if m.subnet_of(q):  # type: ignore[arg-type]
                    nxt.extend(q.address_exclude(m))  # type: ignore[arg-type]
                elif not q.subnet_of(m):  # type: ignore[arg-type]
                    nxt.append(q)
            pieces = nxt
        out.update(pieces)
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted port ranges merged where they overlap or touch."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def classid(n: int) -> str:
    """A class as nft writes a classid (hexadecimal major:minor, as `nft -j` lists it)."""
    return f"{n >> 16:x}:{n & 0xFFFF:x}"


def compile_policy(inp: PolicyInput) -> Compiled:
    out = Compiled()
    if inp.empty:
        return out
    sel = Selection(inp)
    els = out.elements
    by_key = {e.key: e for e in inp.endpoints}
    pols = {p.key: p for p in inp.policies}
    for p in sorted(inp.policies, key=lambda p: p.key):
        for e in sel.selected(p):
            if not e.local:
                continue
            for d, on in (("in", p.ingress_isolation), ("eg", p.egress_isolation)):
                if on:
                    out.isolated.setdefault(e.key, {}).setdefault(d, []).append(p.key)
    members: dict[tuple, list[PolicyEndpoint]] = defaultdict(list)
    for key, dirs in out.isolated.items():
        e = by_key[key]
        for d, keys_ in dirs.items():
            members[class_key(d, keys_, e)].append(e)
    out.classes = class_ids(members)
    text = {ck: classid(n) for ck, n in out.classes.items()}
    iv = Intervals()
    for ck, eps in members.items():
        d, cid = ck[0], text[ck]
        for e in eps:
            for a in e.addresses:
                v = a.version
                els[f"pol{v}"].add(str(a))
                els[f"pol_{d}{v}"].add(str(a))
                els[f"{d}_drop{v}"].add(str(a))
                els[f"{d}_self{v}"].add(f"{a} . {a}")  # a pod cannot block itself
                els[f"{d}_id{v}"].add(f"{a} : {cid}")
        done: set[tuple[str, Rule]] = set()  # the same rule in two policies of a namespace: once
        for pkey in ck[1]:
            p = pols[pkey]
            for r in (p.ingress if d == "in" else p.egress):
                if (p.namespace, r) not in done:
                    done.add((p.namespace, r))
                    _rule(els, iv, sel, p, r, d, cid, eps[0])
    iv.write(els)
    return out


def _rule(els: dict[str, set[str]], iv: Intervals, sel: Selection, p: NetworkPolicy, r: Rule, d: str, cid: str,
          local: PolicyEndpoint) -> None:
    """The elements of rule r for class `cid` (`local`: one of its endpoints; they all
    declare the same ports)."""
    # peers: endpoints (exact addresses) and networks (ipBlocks; "anywhere" when none is given)
    peer_eps: dict[str, PolicyEndpoint] = {}
    nets: list[IPNetwork] = []
    if not r.peers:
        nets = [ANY[4], ANY[6]]
    for peer in r.peers:
        if peer.ip_block is not None:
            nets += peer.ip_block.networks()
        else:
            for e in sel.peer_endpoints(peer, p.namespace):
                peer_eps.setdefault(e.key, e)
    for pe in peer_eps.values():
        target = local if d == "in" else pe
        ranges = [(pp.protocol, _port_ranges(pp, target)) for pp in r.ports]
        for a in pe.addresses:
            v = a.version
            if not r.ports:
                els[f"{d}_peerall{v}"].add(f"{cid} . {a}")
                continue
            for proto, rng in ranges:
                if rng is None:
                    continue
                if rng[0] == rng[1]:
                    els[f"{d}_peer{v}"].add(f"{cid} . {a} . {proto} . {rng[0]}")
                else:
                    iv.box(d, cid, proto, ipaddress.ip_network(a), rng)
    for n in nets:
        v = n.version
        if not r.ports:
            iv.any(d, cid, n)
            continue
        for pp in r.ports:
            if isinstance(pp.port, str) and d == "eg":
                # a named port of a destination: the endpoints inside the network that declare it
                for e in sel.inp.endpoints:
                    num = e.port_number(pp.port, pp.protocol)
                    if num is None:
                        continue
                    for a in e.addresses:
                        if a.version == v and a in n:
                            els[f"{d}_peer{v}"].add(f"{cid} . {a} . {pp.protocol} . {num}")
                continue
            rng = _port_ranges(pp, local)
            if rng is not None:
                iv.box(d, cid, pp.protocol, n, rng)


def elements(inp: PolicyInput) -> dict[str, frozenset[str]]:
    return {k: frozenset(v) for k, v in compile_policy(inp).elements.items()}


def sysctls(inp: PolicyInput) -> dict[str, str]:
    """br_netfilter's calls into the IP hooks: traffic within one bridge must cross the
    forward hook to be filtered (the default in a new namespace; set when policy is used)."""
    return dict(SYSCTLS) if not inp.empty else {}


# -- the same semantics, evaluated directly (explain; the tests' oracle) -----------------------

@dataclass(frozen=True)
class Verdict:
    """One direction of a connection: `isolated` by `policies`; `allowed_by` the rules that
    allow it ("ns/name egress[i]"); `reason` when it is not the policies' to decide."""

    direction: str  # "ingress" or "egress"
    endpoint: str = ""  # the endpoint whose policies decide ('' = not a known endpoint)
    isolated: bool = False
    policies: tuple[str, ...] = ()
    allowed_by: tuple[str, ...] = ()
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return not self.isolated or bool(self.allowed_by)


def _rule_allows(sel: Selection, p: NetworkPolicy, r: Rule, peer_addr: IPAddress, target: PolicyEndpoint | None,
                 protocol: str, port: int | None) -> tuple[bool, str]:
    """Does rule `r` of `p` allow the peer address on (protocol, port)? With the index of the
    peer and port entries that do, for the explanation."""
    peer_ok, which = not r.peers, "any peer"
    for j, peer in enumerate(r.peers):
        if peer.ip_block is not None:
            hit = any(peer_addr.version == n.version and peer_addr in n for n in peer.ip_block.networks())
        else:
            hit = any(peer_addr in e.addresses for e in sel.peer_endpoints(peer, p.namespace))
        if hit:
            peer_ok, which = True, f"peer[{j}] {peer.describe()}"
            break
    if not peer_ok:
        return False, ""
    if not r.ports:
        return True, which + ", any port"
    if port is None and protocol not in ("tcp", "udp", "sctp"):
        return False, ""
    for k, pp in enumerate(r.ports):
        if pp.protocol != protocol:
            continue
        rng = _port_ranges(pp, target)
        if rng is not None and port is not None and rng[0] <= port <= rng[1]:
            return True, f"{which}, ports[{k}] {pp.describe()}"
    return False, ""


def evaluate(inp: PolicyInput, src: IPAddress, dst: IPAddress, protocol: str = "tcp",
             port: int | None = None, sel: Selection | None = None) -> tuple[Verdict, Verdict]:
    """(egress of src, ingress of dst) for a new connection src -> dst (protocol, port),
    whatever host the endpoints are on."""
    sel = sel or Selection(inp)
    by_addr = {a: e for e in inp.endpoints for a in e.addresses}
    out = []
    for direction, local_addr, peer_addr in (("egress", src, dst), ("ingress", dst, src)):
        ep = by_addr.get(local_addr)
        if ep is None:
            out.append(Verdict(direction, reason=f"{local_addr} is no endpoint's address: no policy applies"))
            continue
        if src == dst:
            out.append(Verdict(direction, ep.shown, reason="traffic of an endpoint to itself is always allowed"))
            continue
        pols = [p for p in sorted(inp.policies, key=lambda p: p.key)
                if (p.ingress_isolation if direction == "ingress" else p.egress_isolation)
                and p.namespace == ep.namespace and p.pod_selector.matches(ep.label_map)]
        if not pols:
            out.append(Verdict(direction, ep.shown, reason=f"no policy selects {ep.shown} for {direction}"))
            continue
        target = ep if direction == "ingress" else by_addr.get(peer_addr)
        allowed = []
        for p in pols:
            rules = p.ingress if direction == "ingress" else p.egress
            for i, r in enumerate(rules):
                ok, which = _rule_allows(sel, p, r, peer_addr, target, protocol, port)
                if ok:
                    allowed.append(f"{p.key} {direction}[{i}] ({which})")
        out.append(Verdict(direction, ep.shown, True, tuple(p.key for p in pols), tuple(allowed)))
    return out[0], out[1]


def isolating(inp: PolicyInput) -> dict[str, dict[str, list[str]]]:
    """Endpoint key -> {"in"/"eg": the policies isolating it} (local endpoints)."""
    return compile_policy(inp).isolated


def attribute_drops(inp: PolicyInput, counters: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Per policy: the packets dropped at the endpoints it isolates, by direction, from the
    drop sets' counters ({set name: {address: packets}})."""
    iso = isolating(inp)
    by_addr = {str(a): e.key for e in inp.endpoints if e.local for a in e.addresses}
    out: dict[str, dict[str, int]] = {p.key: {"ingress": 0, "egress": 0} for p in inp.policies}
    for set_name, per in counters.items():
        d = "in" if set_name.startswith("in_") else "eg"
        for addr, packets in per.items():
            for pkey in iso.get(by_addr.get(addr, ""), {}).get(d, []):
                out.setdefault(pkey, {"ingress": 0, "egress": 0})["ingress" if d == "in" else "egress"] += packets
    return out


def endpoint_of(inp: PolicyInput, addr: IPAddress) -> PolicyEndpoint | None:
    for e in inp.endpoints:
        if addr in e.addresses:
            return e
    return None


def find_endpoints(inp: PolicyInput, name: str) -> list[PolicyEndpoint]:
    """Endpoints named `name` or `namespace/name` (explain's SRC and DST)."""
    ns, _, n = name.rpartition("/")
    return [e for e in inp.endpoints if (e.name == n or e.key == n) and (not ns or e.namespace == ns)]


def local_keys(endpoints: Iterable[PolicyEndpoint]) -> set[str]:
    return {e.key for e in endpoints if e.local}

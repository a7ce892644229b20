"""Services in Muslin's nft table (pure): virtual IPs load-balanced over endpoints.

What kube-proxy's nftables mode does, in the table `inet muslin`:
- one verdict map per family, `svc4`/`svc6`: `vip . l4proto . port : goto <service-port chain>`,
  looked up by `svc-prerouting` (containers, other hosts) and `svc-output` (the host);
- one chain per service port, `svc/<network>/<service>/<proto>/<port>`, that DNATs to one of
  its N backends: rule i is `numgen random mod (N-i) == 0 ... dnat to backend i` (the last
  one unconditional), which picks each with probability 1/N. (Not a `numgen random mod N
  vmap {...}`: each such rule makes an anonymous set, and the kernel names a new one by
  scanning every set of the table, so 10,000 services took 16 s to load instead of ~1 s;
  nor one shared map of backends: binding a chain to a map walks all its elements.)
- client affinity (`affinity` seconds): per backend a timeout set of clients and a chain
  that refreshes it and DNATs; the service chain sends a client found in a backend's set
  there first;
- a service port without backends has no map element: its traffic reaches `svc-refuse`
  (prerouting, after NAT) or `svc-refuse-out` (output), which rejects whatever still goes to
  a VIP (TCP reset, else ICMP port unreachable) at once;
- hairpin: a backend reaching itself through the VIP is masqueraded (`svchair4` holds
  `b . b` for each local backend b), so its reply comes back through the host;
- replies from a local backend stay tracked (`svcback4`, checked first in the `raw` chain,
  whose notrack would otherwise skip same-bridge traffic and so the reverse NAT).

Everything here is data and text; `dataplane/nft_services.py` applies it. Each change is one
batch of idempotent commands (`add` of what exists is a no-op; what may be gone is added
and deleted in the same batch: nft 1.0.6 has no `destroy`), so a batch never depends on an
exact picture of the kernel and costs what the changed service ports cost.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable

from muslin.model.types import IPAddress

TABLE = "inet muslin"
PREFIX = "svc/"  # dynamic chains and sets: the base sync (dataplane/nft.py) leaves them alone
MARK = "svc/synced"  # an empty chain a full service sync makes: gone = the table was replaced
PROTOCOLS = ("tcp", "udp", "sctp")

SERVICE_SETS: tuple[tuple[str, str], ...] = (
    ("svcvip4", "type ipv4_addr"),
    ("svcvip6", "type ipv6_addr"),
    ("svcback4", "type ipv4_addr"),
    ("svcback6", "type ipv6_addr"),
    ("svchair4", "type ipv4_addr . ipv4_addr"),
    ("svchair6", "type ipv6_addr . ipv6_addr"),
)
SERVICE_MAPS: tuple[tuple[str, str], ...] = (
    ("svc4", "type ipv4_addr . inet_proto . inet_service : verdict"),
    ("svc6", "type ipv6_addr . inet_proto . inet_service : verdict"),
)
# Put first in the base `raw` chain (firewall/compiler.py).
RAW_RULES: tuple[str, ...] = (
    "ip saddr @svcback4 return",
    "ip6 saddr @svcback6 return",
)
_LOOKUP = ("ip daddr . meta l4proto . th dport vmap @svc4", "ip6 daddr . meta l4proto . th dport vmap @svc6")
_REFUSE = ("ip daddr @svcvip4 goto svc-reject", "ip6 daddr @svcvip6 goto svc-reject")
# Base chains run in priority order; NAT itself is applied at -100 (prerouting, output) and
# 100 (postrouting) whatever the chain's priority, so the refusal at -90 sees the DNATed
# destination.
SERVICE_CHAINS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("svc-reject", "", ("meta l4proto tcp reject with tcp reset", "reject")),
    ("svc-prerouting", "type nat hook prerouting priority -110; policy accept;", _LOOKUP),
    ("svc-output", "type nat hook output priority -110; policy accept;", _LOOKUP),
    ("svc-postrouting", "type nat hook postrouting priority 90; policy accept;", (
        "ct status dnat ip saddr . ip daddr @svchair4 masquerade",
        "ct status dnat ip6 saddr . ip6 daddr @svchair6 masquerade",
    )),
    ("svc-refuse", "type filter hook prerouting priority -90; policy accept;", _REFUSE),
    ("svc-refuse-out", "type filter hook output priority -90; policy accept;", _REFUSE),
)
ELEMENT_SETS: tuple[str, ...] = tuple(n for n, _ in SERVICE_SETS + SERVICE_MAPS)


@dataclass(frozen=True)
class SvcPort:
    """One port of one service, as the kernel sees it. `backends` in a stable order."""

    service: str  # "<network>/<name>"
    vip: IPAddress
    protocol: str
    port: int
    target: int
    backends: tuple[IPAddress, ...] = ()
    affinity: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "vip", ipaddress.ip_address(self.vip))
        object.__setattr__(self, "backends", tuple(sorted({ipaddress.ip_address(b) for b in self.backends},
                                                          key=_addr_key)))

    @property
    def family(self) -> int:
        return self.vip.version

    @property
    def chain(self) -> str:
        return chain_name(self.service, self.protocol, self.port)

    @property
    def key(self) -> str:
        return f"{self.vip} . {self.protocol} . {self.port}"

    def endpoint_chain(self, b: IPAddress) -> str:
        return f"{self.chain}/e/{_addr_name(b)}"

    def affinity_set(self, b: IPAddress) -> str:
        return f"{self.chain}/a/{_addr_name(b)}"


@dataclass(frozen=True)
class ServiceChanges:
    """One batch: service ports (old, new) -- None on one side = created or removed --, VIP
    addresses coming or going, local backend addresses coming or going (what they share:
    raw exemption, hairpin masquerade)."""

    ports: tuple[tuple[SvcPort | None, SvcPort | None], ...] = ()
    vips: tuple[tuple[IPAddress, bool], ...] = ()
    local: tuple[tuple[IPAddress, bool], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.ports and not self.vips and not self.local


@dataclass(frozen=True)
class ServiceObserved:
    """What the kernel holds of the services (observed for a full sync)."""

    chains: frozenset[str] = frozenset()  # svc/ chains
    sets: frozenset[str] = frozenset()  # svc/ sets (affinity)
    vmap: dict[str, str] = field(default_factory=dict)  # "vip . proto . port" -> chain
    vips: frozenset[IPAddress] = frozenset()
    back: frozenset[IPAddress] = frozenset()
    hair: frozenset[IPAddress] = frozenset()  # a in "a . a"


def _addr_key(a: IPAddress) -> tuple[int, int]:
    return a.version, int(a)


def _addr_name(a: IPAddress) -> str:
    return str(a).replace(":", "-")


def chain_name(service: str, protocol: str, port: int) -> str:
    name = f"{PREFIX}{service}/{protocol}/{port}"
    if len(name) > 200:  # nft names stop at 255 bytes, and affinity adds a suffix
        name = f"{PREFIX}{hashlib.sha1(service.encode()).hexdigest()[:16]}/{protocol}/{port}"
    return name


def _ip(v: int) -> str:
    return "ip" if v == 4 else "ip6"


def _to(a: IPAddress, port: int) -> str:
    return f"{a}:{port}" if a.version == 4 else f"[{a}]:{port}"


def chain_rules(p: SvcPort) -> list[str]:
    """The rules of a service port's chain (empty without backends)."""
    n = len(p.backends)
    out: list[str] = []
    if p.affinity:
        for b in p.backends:
            out.append(f"{_ip(p.family)} saddr @{p.affinity_set(b)} goto {p.endpoint_chain(b)}")
    for i, b in enumerate(p.backends):
        pick = f"numgen random mod {n - i} == 0 " if i < n - 1 else ""
        if p.affinity:
            out.append(f"{pick}goto {p.endpoint_chain(b)}")
        else:
            out.append(f"{pick}meta l4proto {p.protocol} dnat {_ip(p.family)} to {_to(b, p.target)}")
    return out


def endpoint_rule(p: SvcPort, b: IPAddress) -> str:
    ip = _ip(p.family)
    return f"update @{p.affinity_set(b)} {{ {ip} saddr }} meta l4proto {p.protocol} dnat {ip} to {_to(b, p.target)}"


def affinity_decl(p: SvcPort) -> str:
    addr = "ipv4_addr" if p.family == 4 else "ipv6_addr"
    return f"{{ type {addr}; flags dynamic,timeout; timeout {p.affinity}s; }}"


class _Batch:
    """Commands grouped so that a batch is valid whatever order its parts were added in."""

    def __init__(self) -> None:
        self.add_chains: dict[str, None] = {}
        self.add_sets: dict[str, str] = {}
        self.del_elems: list[str] = []
        self.flush: dict[str, None] = {}
        self.rules: list[str] = []
        self.del_chains: dict[str, None] = {}
        self.del_sets: dict[str, None] = {}
        self.add_elems: list[str] = []

    def text(self) -> str:
        lines = [f"add chain {TABLE} {c}" for c in self.add_chains]
        lines += [f"add set {TABLE} {s} {d}" for s, d in self.add_sets.items()]
        lines += self.del_elems
        lines += [f"flush chain {TABLE} {c}" for c in self.flush]
        lines += self.rules
        lines += [f"delete chain {TABLE} {c}" for c in self.del_chains]
        lines += [f"delete set {TABLE} {s}" for s in self.del_sets]
        lines += self.add_elems
        return "".join(line + "\n" for line in lines)

    def gone_elem(self, set_name: str, elem: str, key: str | None = None) -> None:
        """Delete an element that may or may not be there: add it, then delete it by key."""
        self.del_elems.append(f"add element {TABLE} {set_name} {{ {elem} }}")
        self.del_elems.append(f"delete element {TABLE} {set_name} {{ {key or elem} }}")

    def drop_port(self, p: SvcPort) -> None:
        self.add_chains[p.chain] = None
        self.gone_elem(f"svc{p.family}", f"{p.key} : goto {p.chain}", p.key)
        self.flush[p.chain] = None
        self.del_chains[p.chain] = None
        if p.affinity:
            for b in p.backends:
                self.drop_affinity(p, b)

    def drop_affinity(self, p: SvcPort, b: IPAddress) -> None:
        ec, s = p.endpoint_chain(b), p.affinity_set(b)
        self.add_chains[ec] = None
        self.add_sets[s] = affinity_decl(p)
        self.flush[ec] = None
        self.del_chains[ec] = None
        self.del_sets[s] = None

    def put_port(self, p: SvcPort, old: SvcPort | None) -> None:
        self.add_chains[p.chain] = None
        self.flush[p.chain] = None
        if p.affinity:
            for b in p.backends:
                ec = p.endpoint_chain(b)
                self.add_sets[p.affinity_set(b)] = affinity_decl(p)
                self.add_chains[ec] = None
                self.flush[ec] = None
                self.rules.append(f"add rule {TABLE} {ec} {endpoint_rule(p, b)}")
        self.rules += [f"add rule {TABLE} {p.chain} {r}" for r in chain_rules(p)]
        elem = f"{p.key} : goto {p.chain}"
        if p.backends:
            self.add_elems.append(f"add element {TABLE} svc{p.family} {{ {elem} }}")
        else:
            self.gone_elem(f"svc{p.family}", elem, p.key)
        if old is not None and old.affinity:
            for b in set(old.backends) - (set(p.backends) if p.affinity else set()):
                self.drop_affinity(old, b)

    def vip(self, a: IPAddress, present: bool) -> None:
        name = f"svcvip{a.version}"
        if present:
            self.add_elems.append(f"add element {TABLE} {name} {{ {a} }}")
        else:
            self.gone_elem(name, str(a))

    def local(self, a: IPAddress, present: bool) -> None:
        v = a.version
        if present:
            self.add_elems.append(f"add element {TABLE} svcback{v} {{ {a} }}")
            self.add_elems.append(f"add element {TABLE} svchair{v} {{ {a} . {a} }}")
        else:
            self.gone_elem(f"svcback{v}", str(a))
            self.gone_elem(f"svchair{v}", f"{a} . {a}")


def render_changes(ch: ServiceChanges) -> str:
    """One nft batch for a set of changes ('' when there is nothing to do)."""
    b = _Batch()
    for old, new in ch.ports:
        if new is None:
            if old is not None:
                b.drop_port(old)
        else:
            b.put_port(new, old)
    for a, present in ch.vips:
        b.vip(a, present)
    for a, present in ch.local:
        b.local(a, present)
    return b.text()


def render_resync(ports: Iterable[SvcPort], vips: Iterable[IPAddress], local: Iterable[IPAddress],
                  observed: ServiceObserved) -> str:
    """The batch that makes the kernel hold exactly these service ports, VIPs and local
    backends, from what it was seen to hold; it also makes the MARK chain."""
    want = {p.chain: p for p in ports}
    b = _Batch()
    b.add_chains[MARK] = None
    # first away: map elements that are not wanted as they are (adding an element that is
    # there with the same value is fine, with another value it is not)
    by_key = {p.key: p.chain for p in want.values() if p.backends}
    for key, chain in sorted(observed.vmap.items()):
        if by_key.get(key) != chain:
            fam = 6 if ":" in key.split(" ", 1)[0] else 4
            b.del_elems.append(f"delete element {TABLE} svc{fam} {{ {key} }}")
    keep_chains: set[str] = {MARK}
    keep_sets: set[str] = set()
    for p in want.values():
        b.put_port(p, None)
        keep_chains.add(p.chain)
        if p.affinity:
            keep_chains.update(p.endpoint_chain(x) for x in p.backends)
            keep_sets.update(p.affinity_set(x) for x in p.backends)
    for c in sorted(observed.chains - keep_chains):
        b.flush[c] = None
        b.del_chains[c] = None
    for s in sorted(observed.sets - keep_sets):
        b.del_sets[s] = None
    vips, local = set(vips), set(local)
    for a in sorted(vips - observed.vips, key=_addr_key):
        b.vip(a, True)
    for a in sorted(observed.vips - vips, key=_addr_key):
        b.del_elems.append(f"delete element {TABLE} svcvip{a.version} {{ {a} }}")
    for a in sorted(local - (observed.back & observed.hair), key=_addr_key):
        b.local(a, True)
    for a in sorted(observed.back - local, key=_addr_key):
        b.del_elems.append(f"delete element {TABLE} svcback{a.version} {{ {a} }}")
    for a in sorted(observed.hair - local, key=_addr_key):
        b.del_elems.append(f"delete element {TABLE} svchair{a.version} {{ {a} . {a} }}")
    return b.text()


# ---- what a full sync observes: `nft -j list ...` of the service sets, maps and chains ----

OBSERVE_COMMANDS: tuple[str, ...] = (
    *(f"list map {TABLE} {n}" for n, _ in SERVICE_MAPS),
    *(f"list set {TABLE} {n}" for n, _ in SERVICE_SETS),
    "list chains inet",
    "list sets inet",
)


def _elem_value(e: Any) -> Any:
    if isinstance(e, dict) and "elem" in e:
        return e["elem"].get("val")
    return e


def parse_observed(docs: Iterable[dict]) -> ServiceObserved:
    """From the JSON documents of OBSERVE_COMMANDS (pure)."""
    chains: set[str] = set()
    sets: set[str] = set()
    vmap: dict[str, str] = {}
    vips: set[IPAddress] = set()
    back: set[IPAddress] = set()
    hair: set[IPAddress] = set()
    for doc in docs:
        for item in doc.get("nftables", []):
            if len(item) != 1:
                continue
            (kind, obj), = item.items()
            if not isinstance(obj, dict) or obj.get("family") != "inet" or obj.get("table") != "muslin":
                continue
            name = str(obj.get("name", ""))
            if kind == "chain" and name.startswith(PREFIX):
                chains.add(name)
            elif kind == "set" and name.startswith(PREFIX):
                sets.add(name)
            elif kind == "map" and name in ("svc4", "svc6"):
                for e in obj.get("elem", []) or []:
                    k, v = e
                    parts = _elem_value(k)
                    parts = parts.get("concat", []) if isinstance(parts, dict) else []
                    target = (v.get("goto") or v.get("jump") or {}).get("target", "") if isinstance(v, dict) else ""
                    if len(parts) == 3:
                        vmap[f"{parts[0]} . {parts[1]} . {parts[2]}"] = target
            elif kind == "set" and name in ("svcvip4", "svcvip6", "svcback4", "svcback6"):
                into = vips if name.startswith("svcvip") else back
                for e in obj.get("elem", []) or []:
                    into.add(ipaddress.ip_address(_elem_value(e)))
            elif kind == "set" and name in ("svchair4", "svchair6"):
                for e in obj.get("elem", []) or []:
                    v = _elem_value(e)
                    parts = v.get("concat", []) if isinstance(v, dict) else []
                    if len(parts) == 2 and parts[0] == parts[1]:
                        hair.add(ipaddress.ip_address(parts[0]))
    return ServiceObserved(frozenset(chains), frozenset(sets), vmap, frozenset(vips), frozenset(back),
                           frozenset(hair))

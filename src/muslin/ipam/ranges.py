"""Pure address management: ranges, range sets, round-robin allocation, subnet carving.

No I/O: only `ipaddress` and `muslin.model`. The stateful side (the Store) lives in
`muslin.control.ipam`.

Semantics follow the reference host-local IPAM plugin:
- gateway defaults to subnet+1, rangeStart to subnet+1 (the gateway is skipped while
  iterating), rangeEnd to the broadcast-1 (v4) or the last address (v6);
- a subnet needs at least 2 host bits (/31, /32, /127, /128 are too small);
- allocation is round-robin per range set, starting after the last address handed out
  and wrapping across the set's ranges.
Work is proportional to the number of used addresses, never to the size of a range,
so IPv6 /64 ranges are fine.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from muslin.model.errors import Conflict, Exhausted, Invalid
from muslin.model.types import IPAddress, IPNetwork, IPRange, RangeSet

__all__ = [
    "normalize_range", "validate_range_sets", "next_free", "carve", "pick_pool",
    "parse_ipam_ranges", "parse_range_sets", "describe_range", "describe_range_set",
    "range_contains", "range_set_of", "check_subnet",
]


def _addr(net: IPNetwork, n: int) -> IPAddress:
    return ipaddress.IPv4Address(n) if net.version == 4 else ipaddress.IPv6Address(n)


def _bounds(r: IPRange) -> tuple[int, int]:
    """Usable [lo, hi] integers of a normalized range."""
    assert r.range_start is not None and r.range_end is not None
    return int(r.range_start), int(r.range_end)


def describe_range(r: IPRange) -> str:
    """'10.1.0.0/24', or '10.1.0.0/24 [10.1.0.10-10.1.0.20]' when start/end are not the defaults."""
    try:
        n = normalize_range(IPRange(r.subnet, gateway=r.gateway))
    except Invalid:
        return str(r.subnet)
    start, end = r.range_start or n.range_start, r.range_end or n.range_end
    if start == n.range_start and end == n.range_end:
        return str(r.subnet)
    return f"{r.subnet} [{start}-{end}]"


def describe_range_set(rs: RangeSet) -> str:
    return ", ".join(describe_range(r) for r in rs)


# Address blocks a container subnet must not overlap (a /0 or /1 always does).
_RESERVED = tuple((ipaddress.ip_network(n), what) for n, what in (
    ("0.0.0.0/8", "the 'this network' block 0.0.0.0/8"), ("127.0.0.0/8", "the loopback block 127.0.0.0/8"),
    ("224.0.0.0/4", "the multicast block 224.0.0.0/4"), ("::/127", "the unspecified and loopback addresses ::/127"),
    ("ff00::/8", "the multicast block ff00::/8")))


def check_subnet(net: IPNetwork, what: str = "subnet") -> None:
    """A subnet containers can live in: not 0.0.0.0/0 or ::/0, not overlapping loopback,
    multicast or 0.0.0.0/8. Raises Invalid."""
    if net.prefixlen == 0:
        raise Invalid(f"{what} {net} is every address: a container subnet must be a real block "
                      f"(like {'10.88.0.0/16' if net.version == 4 else 'fd00:88::/64'})")
    for block, name in _RESERVED:
        if block.version == net.version and net.overlaps(block):  # type: ignore[arg-type]
            raise Invalid(f"{what} {net} overlaps {name}: containers cannot use it")


def normalize_range(r: IPRange) -> IPRange:
    """Fill in host-local defaults and validate one range; raises Invalid."""
    net = r.subnet
    if not isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        raise Invalid(f"subnet {net!r} is not an IP network")
    check_subnet(net)
    if net.max_prefixlen - net.prefixlen < 2:
        raise Invalid(f"subnet {net} is too small to allocate from: it needs at least 2 host bits")
    first = int(net.network_address)
    last = int(net.broadcast_address)
    gateway = r.gateway if r.gateway is not None else _addr(net, first + 1)
    start = r.range_start if r.range_start is not None else _addr(net, first + 1)
    end = r.range_end if r.range_end is not None else _addr(net, last - 1 if net.version == 4 else last)
    for what, ip in (("rangeStart", start), ("rangeEnd", end), ("gateway", gateway)):
        if ip.version != net.version or ip not in net:
            raise Invalid(f"{what} {ip} is not inside subnet {net}")
    if int(start) > int(end):
        raise Invalid(f"rangeStart {start} is after rangeEnd {end} in subnet {net}")
    return IPRange(net, start, end, gateway)


def _overlap(a: IPRange, b: IPRange) -> bool:
    if a.subnet.version != b.subnet.version:
        return False
    alo, ahi = _bounds(a)
    blo, bhi = _bounds(b)
    return alo <= bhi and blo <= ahi


def validate_range_sets(sets: Iterable[RangeSet]) -> tuple[RangeSet, ...]:
    """Normalize every range and check: sets non-empty and single-family, ranges inside a
    set disjoint, sets disjoint from each other. Returns the normalized sets; raises Invalid."""
    out: list[RangeSet] = []
    for i, rs in enumerate(sets):
        rs = tuple(rs)
        if not rs:
            raise Invalid(f"range set {i} is empty: it needs at least one range")
        norm = tuple(normalize_range(r) for r in rs)
        fams = {r.subnet.version for r in norm}
        if len(fams) > 1:
            raise Invalid(f"range set {describe_range_set(norm)} mixes IPv4 and IPv6")
        for a in range(len(norm)):
            for b in range(a + 1, len(norm)):
                if _overlap(norm[a], norm[b]):
                    raise Invalid(f"ranges {describe_range(norm[a])} and {describe_range(norm[b])} "
                                  f"overlap in one range set")
        for prev in out:
            for pa in prev:
                for nb in norm:
                    if _overlap(pa, nb):
                        raise Invalid(f"range sets {describe_range_set(prev)} and {describe_range_set(norm)} overlap")
        out.append(norm)
    return tuple(out)


def _skip(r: IPRange, n: int) -> bool:
    """The gateway, the network address and the v4 broadcast address are never handed out."""
    net = r.subnet
    if r.gateway is not None and n == int(r.gateway):
        return True
    if n == int(net.network_address):
        return True
    return net.version == 4 and n == int(net.broadcast_address)


def range_contains(r: IPRange, ip: IPAddress) -> bool:
    """ip lies inside the (normalized) range's [start, end] and its subnet."""
    r = r if r.range_start is not None and r.range_end is not None else normalize_range(r)
    if ip.version != r.subnet.version or ip not in r.subnet:
        return False
    lo, hi = _bounds(r)
    return lo <= int(ip) <= hi


def _network_or_broadcast(r: IPRange, ip: IPAddress) -> bool:
    net = r.subnet
    return ip.version == net.version and (ip == net.network_address or
                                          (net.version == 4 and ip == net.broadcast_address))


def range_set_of(sets: Iterable[RangeSet], ip: IPAddress) -> int | None:
    """Index of the range set one of whose ranges contains ip, or None. The network or
    broadcast address of a range's subnet also belongs to that set (so that `next_free`
    says why it cannot be handed out, instead of 'outside the range')."""
    sets = list(sets)
    for i, rs in enumerate(sets):
        if any(range_contains(r, ip) for r in rs):
            return i
    for i, rs in enumerate(sets):
        if any(_network_or_broadcast(r, ip) for r in rs):
            return i
    return None


def _candidates(ranges: RangeSet, last: IPAddress | None) -> Iterator[tuple[int, IPRange]]:
    """Every address of the set once, starting after `last` and wrapping around."""
    idx, pos = 0, None
    if last is not None:
        for i, r in enumerate(ranges):
            if range_contains(r, last):
                idx, pos = i, int(last) + 1
                break
    k = len(ranges)
    # first pass: from `pos` in ranges[idx] to the end of the set, then wrap around.
    for step in range(k + 1):
        r = ranges[(idx + step) % k]
        lo, hi = _bounds(r)
        if step == 0 and pos is not None:
            n, stop = pos, hi
        elif step == k:
            if pos is None:
                return
            n, stop = lo, pos - 1  # the part of the first range before `last`+1
        else:
            n, stop = lo, hi
        while n <= stop:
            yield n, r
            n += 1


def first_candidates(range_set: RangeSet, last: IPAddress | None, limit: int) -> list[tuple[IPAddress, IPRange]]:
    """The first `limit` addresses `next_free` would try, in its order (round-robin after
    `last`, gateways, network and broadcast addresses skipped), used or not: a caller that
    can test one address cheaply probes these before listing every used address."""
    ranges = tuple(normalize_range(r) for r in range_set)
    out: list[tuple[IPAddress, IPRange]] = []
    for n, r in _candidates(ranges, last):
        if len(out) >= limit:
            break
        if not _skip(r, n):
            out.append((_addr(r.subnet, n), r))
    return out


def next_free(range_set: RangeSet, used: Iterable[IPAddress], last: IPAddress | None,
              requested: IPAddress | None = None) -> tuple[IPAddress, IPRange]:
    """The next address to hand out from one range set, and the range it belongs to.

    Round-robin: starts after `last` (the address handed out last in this set), wraps
    across the set's ranges, skips used addresses, gateways, network and broadcast
    addresses. With `requested`, returns exactly that address or raises Invalid (outside
    the set, the gateway) / Conflict (in use). Raises Exhausted when nothing is free.
    Cost: O(len(used)) — every skipped candidate is a used or a reserved address.
    """
    ranges = tuple(normalize_range(r) for r in range_set)
    if not ranges:
        raise Invalid("range set is empty: it needs at least one range")
    used_ints = {int(u) for u in used if u.version == ranges[0].subnet.version}
    if requested is not None:
        for r in ranges:
            if range_contains(r, requested):
                n = int(requested)
                if r.gateway is not None and n == int(r.gateway):
                    raise Invalid(f"{requested} is the gateway of {r.subnet} and cannot be assigned")
                if _skip(r, n):
                    raise Invalid(f"{requested} is the network or broadcast address of {r.subnet}")
                if n in used_ints:
                    raise Conflict(f"{requested} is already in use in {r.subnet}")
                return requested, r
        for r in ranges:
            if _network_or_broadcast(r, requested):
                what = "network" if requested == r.subnet.network_address else "broadcast"
                raise Invalid(f"{requested} is the {what} address of {r.subnet} and cannot be assigned")
        raise Invalid(f"{requested} is outside the range {describe_range_set(ranges)}")
    for n, r in _candidates(ranges, last):
        if n in used_ints or _skip(r, n):
            continue
        return _addr(r.subnet, n), r
    raise Exhausted(f"no IP addresses available in range set {describe_range_set(ranges)}")


def carve(cluster: IPNetwork, prefixlen: int, taken: Iterable[IPNetwork],
          prefer: IPNetwork | None = None) -> IPNetwork:
    """A free /prefixlen inside `cluster` that overlaps nothing in `taken`.

    Returns `prefer` when it is a free /prefixlen inside the cluster, else the lowest
    free one. Raises Invalid when prefixlen is shorter than the cluster's prefix (or
    longer than the address), Exhausted when no block is free. O(len(taken) log len(taken)).
    """
    if prefixlen < cluster.prefixlen or prefixlen > cluster.max_prefixlen:
        raise Invalid(f"cannot carve /{prefixlen} subnets from {cluster}: the prefix length must be "
                      f"between {cluster.prefixlen} and {cluster.max_prefixlen}")
    busy = sorted((t for t in taken if t.version == cluster.version and t.overlaps(cluster)),
                  key=lambda t: int(t.network_address))
    if (prefer is not None and prefer.version == cluster.version and prefer.prefixlen == prefixlen
            and prefer.subnet_of(cluster) and not any(prefer.overlaps(t) for t in busy)):  # type: ignore[arg-type]
        return prefer
    size = 1 << (cluster.max_prefixlen - prefixlen)
    pos = int(cluster.network_address)
    end = int(cluster.broadcast_address)
    for t in busy:
        tlo, thi = int(t.network_address), int(t.broadcast_address)
        if thi < pos:
            continue
        if pos + size - 1 < tlo:
            break
        pos = ((thi + 1 + size - 1) // size) * size  # align up past the taken block
        if pos > end:
            break
    if pos + size - 1 <= end:
        return ipaddress.ip_network((pos, prefixlen)) if cluster.version == 4 else ipaddress.IPv6Network((pos, prefixlen))
    raise Exhausted(f"no free /{prefixlen} subnet left in {cluster}")


def pick_pool(candidates: Iterable[IPNetwork], in_use: Iterable[IPNetwork]) -> IPNetwork:
    """The first candidate pool overlapping no network in use; raises Exhausted."""
    used = list(in_use)
    cands = list(candidates)
    for c in cands:
        if not any(u.version == c.version and c.overlaps(u) for u in used):  # type: ignore[arg-type]
            return c
    shown = ", ".join(str(c) for c in cands[:4]) + (", ..." if len(cands) > 4 else "")
    raise Exhausted(f"no free address pool: every candidate ({shown or 'none'}) overlaps a network in use")


# ----------------------------------------------------------------------------------------
# parsing host-local style configuration


def _parse_ip(where: str, value: Any) -> IPAddress:
    if not isinstance(value, str):
        raise Invalid(f"{where} must be an IP address string, got {value!r}")
    try:
        return ipaddress.ip_address(value)  # no strip: "10.0.0.1\n" is not an address
    except ValueError:
        raise Invalid(f"{where} {value!r} is not an IP address") from None


def _parse_subnet(where: str, value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise Invalid(f"{where} must be a CIDR string, got {value!r}")
    try:
        net = ipaddress.ip_network(value, strict=False)  # no strip: "10.0.0.0/24\n" is refused
    except ValueError:
        raise Invalid(f"{where} {value!r} is not a CIDR subnet") from None
    if "/" not in value:
        raise Invalid(f"{where} {value!r} needs a prefix length (e.g. {net.network_address}/24)")
    if ipaddress.ip_interface(value).ip != net.network_address:
        raise Invalid(f"{where} {value} has host bits set (did you mean {net}?)")
    check_subnet(net, where)
    return net


def _parse_range(where: str, d: Any) -> IPRange:
    if not isinstance(d, Mapping):
        raise Invalid(f"{where} must be an object with a subnet, got {d!r}")
    if "subnet" not in d or d["subnet"] in (None, ""):
        raise Invalid(f"{where}.subnet is missing")
    net = _parse_subnet(f"{where}.subnet", d["subnet"])

    def opt(k: str) -> IPAddress | None:
        v = d.get(k)
        return None if v in (None, "") else _parse_ip(f"{where}.{k}", v)

    r = IPRange(net, opt("rangeStart"), opt("rangeEnd"), opt("gateway"))
    try:
        return normalize_range(r)
    except Invalid as e:
        raise Invalid(f"{where}: {e.message}") from None


def parse_range_sets(value: Any, where: str = "ipam.ranges") -> tuple[RangeSet, ...]:
    """A host-local `ranges` value (list of lists of range objects), normalized, unvalidated
    across sets. Raises Invalid naming the key and value."""
    if not isinstance(value, list):
        raise Invalid(f"{where} must be a list of range sets, got {value!r}")
    out: list[RangeSet] = []
    for i, rs in enumerate(value):
        if not isinstance(rs, list):
            raise Invalid(f"{where}[{i}] must be a list of ranges, got {rs!r}")
        if not rs:
            raise Invalid(f"{where}[{i}] is empty: a range set needs at least one range")
        out.append(tuple(_parse_range(f"{where}[{i}][{j}]", r) for j, r in enumerate(rs)))
    return tuple(out)


def parse_ipam_ranges(ipam: Mapping[str, Any]) -> tuple[RangeSet, ...]:
    """Range sets of a host-local style `ipam` object: the legacy top-level
    subnet/rangeStart/rangeEnd/gateway (first, as its own set) followed by `ranges`.
    Validated (normalized, no overlaps). Returns () when neither is given."""
    if not isinstance(ipam, Mapping):
        raise Invalid(f"ipam must be an object, got {ipam!r}")
    sets: list[RangeSet] = []
    if ipam.get("subnet") not in (None, ""):
        sets.append((_parse_range("ipam", {k: ipam.get(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway")}),))
    else:
        for k in ("rangeStart", "rangeEnd", "gateway"):
            if ipam.get(k) not in (None, ""):
                raise Invalid(f"ipam.subnet is missing: ipam.{k} needs a subnet "
                              f"(or put it into a range of ipam.ranges)")
    if "ranges" in ipam and ipam["ranges"] is not None:
        sets.extend(parse_range_sets(ipam["ranges"], "ipam.ranges"))
    return validate_range_sets(sets)

"""Property tests (Hypothesis) of the pure IPAM allocator and subnet carving."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from muslin.ipam.ranges import carve, next_free, normalize_range
from muslin.model.errors import Exhausted
from muslin.model.types import IPRange


@st.composite
def v4_range_sets(draw):
    """One or two disjoint v4 ranges (possibly custom start/end/gateway), small enough to fill."""
    k = draw(st.integers(1, 2))
    out = []
    for i in range(k):
        plen = draw(st.integers(26, 30))
        net = IPv4Network((f"10.{i}.{draw(st.integers(0, 255))}.0", plen), strict=False)
        first, last = int(net.network_address), int(net.broadcast_address)
        start = draw(st.integers(first, last))
        end = draw(st.integers(start, last))
        gw = draw(st.one_of(st.none(), st.integers(first + 1, last - 1)))
        out.append(normalize_range(IPRange(net, IPv4Address(start), IPv4Address(end),
                                           IPv4Address(gw) if gw is not None else None)))
    return tuple(out)


def usable(rs):
    out = set()
    for r in rs:
        for n in range(int(r.range_start), int(r.range_end) + 1):
            a = IPv4Address(n)
            if a in (r.gateway, r.subnet.network_address, r.subnet.broadcast_address):
                continue
            out.add(a)
    return out


@settings(max_examples=150, deadline=None)
@given(rs=v4_range_sets(), data=st.data())
def test_fill_never_duplicates_always_inside_exhausted_exactly_when_full(rs, data):
    pool = usable(rs)
    # start with a random subset already used
    pre = set(data.draw(st.lists(st.sampled_from(sorted(pool)), unique=True), label="pre")) if pool else set()
    used = set(pre)
    last = data.draw(st.one_of(st.none(), st.sampled_from(sorted(pool))) if pool else st.none(), label="last")
    while True:
        if used >= pool:
            with pytest.raises(Exhausted, match="no IP addresses available in range set"):
                next_free(rs, used, last)
            break
        ip, r = next_free(rs, used, last)
        assert ip not in used
        assert ip in pool
        assert r in rs and int(r.range_start) <= int(ip) <= int(r.range_end)
        assert ip != r.gateway and ip != r.subnet.network_address and ip != r.subnet.broadcast_address
        used.add(ip)
        last = ip
    assert used == pool


@settings(max_examples=150, deadline=None)
@given(rs=v4_range_sets(), data=st.data())
def test_round_robin_released_address_not_reused_right_away(rs, data):
    pool = sorted(usable(rs))
    assume(len(pool) >= 3)
    used: set = set()
    last = None
    n = data.draw(st.integers(1, len(pool) - 2), label="n")
    handed = []
    for _ in range(n):
        ip, _ = next_free(rs, used, last)
        used.add(ip)
        handed.append(ip)
        last = ip
    released = data.draw(st.sampled_from(handed), label="released")
    used.discard(released)
    # while other addresses are free, the released one is handed out last
    free_others = len(pool) - len(used) - 1
    for _ in range(free_others):
        ip, _ = next_free(rs, used, last)
        assert ip != released
        used.add(ip)
        last = ip
    ip, _ = next_free(rs, used, last)
    assert ip == released


@settings(max_examples=100, deadline=None)
@given(start=st.integers(0, 2**64 - 1), count=st.integers(0, 300))
def test_v6_64_consecutive_used_block(start, count):
    net = IPv6Network("fd00:5::/64")
    r = normalize_range(IPRange(net))
    base = int(net.network_address)
    used = {ip_address(base + (start + i) % 2**64) for i in range(count)}
    last = ip_address(base + (start - 1) % 2**64)
    ip, _ = next_free((r,), used, last)
    assert ip not in used and ip in net and ip != r.gateway and ip != net.network_address


@settings(max_examples=200, deadline=None)
@given(plen=st.integers(20, 26), data=st.data())
def test_carve_never_overlaps(plen, data):
    cluster = IPv4Network("10.244.0.0/20")
    taken = []
    for _ in range(data.draw(st.integers(0, 12), label="k")):
        tl = data.draw(st.integers(20, 30), label="tl")
        off = data.draw(st.integers(0, 2**12 - 1), label="off")
        taken.append(IPv4Network((int(cluster.network_address) + off, tl), strict=False))
    try:
        got = carve(cluster, plen, taken)
    except Exhausted:
        # really nothing free: every aligned block overlaps something
        for cand in cluster.subnets(new_prefix=plen):
            assert any(cand.overlaps(t) for t in taken)
        return
    assert got.prefixlen == plen and got.subnet_of(cluster)
    assert not any(got.overlaps(t) for t in taken)
    # and it is the lowest such block
    for cand in cluster.subnets(new_prefix=plen):
        if cand == got:
            break
        assert any(cand.overlaps(t) for t in taken)

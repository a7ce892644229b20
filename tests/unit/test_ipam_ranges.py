"""Plain unit tests of the pure IPAM (muslin.ipam.ranges): defaults, validation, messages."""

from __future__ import annotations

import time
from ipaddress import ip_address as A
from ipaddress import ip_network as N

import pytest

from muslin.ipam.ranges import (carve, next_free, normalize_range, parse_ipam_ranges, pick_pool,
                                validate_range_sets)
from muslin.model.errors import Conflict, Exhausted, Invalid
from muslin.model.types import IPRange


def R(subnet, start=None, end=None, gw=None) -> IPRange:
    return IPRange(N(subnet), A(start) if start else None, A(end) if end else None, A(gw) if gw else None)


# --- normalize_range -------------------------------------------------------------------

def test_defaults_v4():
    r = normalize_range(R("10.1.0.0/24"))
    assert (r.range_start, r.range_end, r.gateway) == (A("10.1.0.1"), A("10.1.0.254"), A("10.1.0.1"))


def test_defaults_v6_end_is_last_address():
    r = normalize_range(R("fd00:1::/64"))
    assert r.gateway == A("fd00:1::1")
    assert r.range_start == A("fd00:1::1")
    assert r.range_end == A("fd00:1::ffff:ffff:ffff:ffff")


def test_explicit_values_kept():
    r = normalize_range(R("10.1.0.0/24", "10.1.0.10", "10.1.0.20", "10.1.0.254"))
    assert (r.range_start, r.range_end, r.gateway) == (A("10.1.0.10"), A("10.1.0.20"), A("10.1.0.254"))


@pytest.mark.parametrize("subnet", ["10.0.0.0/31", "10.0.0.1/32", "fd00::/127", "fd00::1/128"])
def test_too_small(subnet):
    with pytest.raises(Invalid, match=r"too small"):
        normalize_range(R(subnet))


def test_smallest_allowed_v4_30():
    r = normalize_range(R("10.0.0.0/30"))
    assert (r.range_start, r.range_end) == (A("10.0.0.1"), A("10.0.0.2"))
    ip, _ = next_free((r,), [], None)
    assert ip == A("10.0.0.2")  # .1 is the gateway


def test_start_outside_subnet():
    with pytest.raises(Invalid, match=r"^rangeStart 10.2.0.1 is not inside subnet 10.1.0.0/24$"):
        normalize_range(R("10.1.0.0/24", start="10.2.0.1"))


def test_end_outside_subnet():
    with pytest.raises(Invalid, match=r"rangeEnd 10.1.1.0 is not inside subnet 10.1.0.0/24"):
        normalize_range(R("10.1.0.0/24", end="10.1.1.0"))


def test_family_mismatch():
    with pytest.raises(Invalid, match=r"rangeStart fd00::1 is not inside subnet 10.1.0.0/24"):
        normalize_range(R("10.1.0.0/24", start="fd00::1"))


def test_start_after_end():
    with pytest.raises(Invalid, match=r"rangeStart 10.1.0.50 is after rangeEnd 10.1.0.10"):
        normalize_range(R("10.1.0.0/24", "10.1.0.50", "10.1.0.10"))


def test_gateway_outside():
    with pytest.raises(Invalid, match=r"gateway 10.9.0.1 is not inside subnet 10.1.0.0/24"):
        normalize_range(R("10.1.0.0/24", gw="10.9.0.1"))


# --- validate_range_sets ---------------------------------------------------------------

def test_sets_overlap():
    with pytest.raises(Invalid, match=r"range sets 10.1.0.0/24 and 10.1.0.0/16 overlap"):
        validate_range_sets([(R("10.1.0.0/24"),), (R("10.1.0.0/16"),)])


def test_ranges_in_set_overlap():
    with pytest.raises(Invalid, match=r"overlap in one range set"):
        validate_range_sets([(R("10.1.0.0/24", "10.1.0.10", "10.1.0.100"),
                              R("10.1.0.0/24", "10.1.0.50", "10.1.0.200"))])


def test_disjoint_ranges_in_one_subnet_ok():
    sets = validate_range_sets([(R("10.1.0.0/24", "10.1.0.10", "10.1.0.19"),
                                 R("10.1.0.0/24", "10.1.0.20", "10.1.0.29"))])
    assert len(sets[0]) == 2


def test_dual_stack_ok_and_normalized():
    sets = validate_range_sets([(R("10.1.0.0/24"),), (R("fd00::/64"),)])
    assert sets[1][0].gateway == A("fd00::1")


def test_mixed_family_set():
    with pytest.raises(Invalid, match=r"mixes IPv4 and IPv6"):
        validate_range_sets([(R("10.1.0.0/24"), R("fd00::/64"))])


def test_empty_set():
    with pytest.raises(Invalid, match=r"empty"):
        validate_range_sets([()])


# --- next_free -------------------------------------------------------------------------

def test_first_address_skips_gateway():
    ip, r = next_free((R("10.1.0.0/24"),), [], None)
    assert ip == A("10.1.0.2") and r.subnet == N("10.1.0.0/24")


def test_round_robin_after_last():
    ip, _ = next_free((R("10.1.0.0/24"),), [A("10.1.0.2")], A("10.1.0.7"))
    assert ip == A("10.1.0.8")


def test_wraps_to_start():
    ip, _ = next_free((R("10.1.0.0/24"),), [], A("10.1.0.254"))
    assert ip == A("10.1.0.2")


def test_wraps_across_ranges():
    rs = (R("10.1.0.0/24", "10.1.0.10", "10.1.0.11"), R("10.2.0.0/24", "10.2.0.5", "10.2.0.6"))
    assert next_free(rs, [], A("10.1.0.11"))[0] == A("10.2.0.5")
    assert next_free(rs, [], A("10.2.0.6"))[0] == A("10.1.0.10")
    assert next_free(rs, [A("10.1.0.10"), A("10.1.0.11")], A("10.2.0.6"))[0] == A("10.2.0.5")


def test_last_outside_set_starts_at_beginning():
    ip, _ = next_free((R("10.1.0.0/24"),), [], A("192.168.0.1"))
    assert ip == A("10.1.0.2")


def test_custom_gateway_skipped():
    rs = (R("10.1.0.0/24", "10.1.0.1", "10.1.0.3", gw="10.1.0.2"),)
    assert next_free(rs, [], None)[0] == A("10.1.0.1")
    assert next_free(rs, [A("10.1.0.1")], None)[0] == A("10.1.0.3")


def test_network_and_broadcast_never_handed_out():
    rs = (R("10.1.0.0/30", "10.1.0.0", "10.1.0.3", gw="10.1.0.1"),)
    assert next_free(rs, [], None)[0] == A("10.1.0.2")
    with pytest.raises(Exhausted):
        next_free(rs, [A("10.1.0.2")], None)


def test_exhausted_message():
    rs = (R("10.1.0.0/29"),)
    used = [A(f"10.1.0.{i}") for i in range(2, 7)]
    with pytest.raises(Exhausted, match=r"^no IP addresses available in range set 10.1.0.0/24$".replace("24", "29")):
        next_free(rs, used, None)


def test_exhausted_message_custom_range():
    rs = (R("10.1.0.0/24", "10.1.0.10", "10.1.0.10"),)
    with pytest.raises(Exhausted, match=r"no IP addresses available in range set 10.1.0.0/24 \[10.1.0.10-10.1.0.10\]"):
        next_free(rs, [A("10.1.0.10")], None)


def test_requested_ok():
    ip, r = next_free((R("10.1.0.0/24"),), [A("10.1.0.2")], A("10.1.0.2"), requested=A("10.1.0.77"))
    assert ip == A("10.1.0.77")


def test_requested_outside_message():
    with pytest.raises(Invalid, match=r"^10.1.2.3 is outside the range 10.1.0.0/24$"):
        next_free((R("10.1.0.0/24"),), [], None, requested=A("10.1.2.3"))


def test_requested_outside_custom_range_message():
    with pytest.raises(Invalid, match=r"^10.1.0.3 is outside the range 10.1.0.0/24 \[10.1.0.10-10.1.0.20\]$"):
        next_free((R("10.1.0.0/24", "10.1.0.10", "10.1.0.20"),), [], None, requested=A("10.1.0.3"))


def test_requested_gateway():
    with pytest.raises(Invalid, match=r"^10.1.0.1 is the gateway of 10.1.0.0/24"):
        next_free((R("10.1.0.0/24"),), [], None, requested=A("10.1.0.1"))


def test_requested_in_use():
    with pytest.raises(Conflict, match=r"^10.1.0.9 is already in use in 10.1.0.0/24$"):
        next_free((R("10.1.0.0/24"),), [A("10.1.0.9")], None, requested=A("10.1.0.9"))


def test_v6_64_is_fast():
    rs = (R("fd00:1::/64"),)
    used = [A("fd00:1::2") + i for i in range(20000)]
    t = time.perf_counter()
    ip, _ = next_free(rs, used, None)
    assert ip == A("fd00:1::2") + 20000
    # and a full-range wrap from the end of a /64 costs nothing either
    assert next_free(rs, used, A("fd00:1::ffff:ffff:ffff:ffff"))[0] == A("fd00:1::2") + 20000
    assert time.perf_counter() - t < 2.0


# --- carve / pick_pool -----------------------------------------------------------------

def test_carve_first_free():
    assert carve(N("10.244.0.0/16"), 24, []) == N("10.244.0.0/24")
    assert carve(N("10.244.0.0/16"), 24, [N("10.244.0.0/24"), N("10.244.1.0/24")]) == N("10.244.2.0/24")
    assert carve(N("10.244.0.0/16"), 24, [N("10.244.1.0/24")]) == N("10.244.0.0/24")


def test_carve_skips_bigger_taken_block():
    assert carve(N("10.244.0.0/16"), 24, [N("10.244.0.0/22")]) == N("10.244.4.0/24")
    assert carve(N("10.244.0.0/16"), 22, [N("10.244.1.7/32")]) == N("10.244.4.0/22")


def test_carve_prefer():
    taken = [N("10.244.0.0/24")]
    assert carve(N("10.244.0.0/16"), 24, taken, prefer=N("10.244.9.0/24")) == N("10.244.9.0/24")
    assert carve(N("10.244.0.0/16"), 24, taken, prefer=N("10.244.0.0/24")) == N("10.244.1.0/24")
    assert carve(N("10.244.0.0/16"), 24, taken, prefer=N("10.9.9.0/24")) == N("10.244.1.0/24")


def test_carve_exhausted():
    taken = [N(f"10.244.{i}.0/24") for i in range(4)]
    with pytest.raises(Exhausted, match=r"no free /24 subnet left in 10.244.0.0/22"):
        carve(N("10.244.0.0/22"), 24, taken)


def test_carve_invalid_prefix():
    with pytest.raises(Invalid, match=r"cannot carve /15 subnets from 10.244.0.0/16"):
        carve(N("10.244.0.0/16"), 15, [])


def test_carve_v6():
    assert carve(N("fd00::/48"), 64, [N("fd00::/64")]) == N("fd00:0:0:1::/64")


def test_pick_pool():
    cands = [N("172.18.0.0/16"), N("172.19.0.0/16"), N("172.20.0.0/16")]
    assert pick_pool(cands, []) == N("172.18.0.0/16")
    assert pick_pool(cands, [N("172.18.5.0/24"), N("172.19.0.0/16")]) == N("172.20.0.0/16")
    with pytest.raises(Exhausted, match=r"no free address pool"):
        pick_pool(cands, [N("172.16.0.0/12")])


# --- parse_ipam_ranges -----------------------------------------------------------------

def test_parse_ranges_dual_stack():
    sets = parse_ipam_ranges({"type": "host-local", "ranges": [
        [{"subnet": "10.22.0.0/16", "rangeStart": "10.22.1.1", "rangeEnd": "10.22.1.254"}],
        [{"subnet": "fd22::/64"}]]})
    assert len(sets) == 2
    assert sets[0][0].range_start == A("10.22.1.1") and sets[0][0].gateway == A("10.22.0.1")
    assert sets[1][0].subnet == N("fd22::/64")


def test_parse_legacy_first():
    sets = parse_ipam_ranges({"subnet": "10.1.0.0/24", "gateway": "10.1.0.254",
                              "ranges": [[{"subnet": "fd00::/64"}]]})
    assert [s[0].subnet for s in sets] == [N("10.1.0.0/24"), N("fd00::/64")]
    assert sets[0][0].gateway == A("10.1.0.254")


def test_parse_empty():
    assert parse_ipam_ranges({"type": "host-local"}) == ()


@pytest.mark.parametrize("ipam, msg", [
    ({"ranges": "10.0.0.0/24"}, r"ipam.ranges must be a list of range sets, got '10.0.0.0/24'"),
    ({"ranges": [{"subnet": "10.0.0.0/24"}]}, r"ipam.ranges\[0\] must be a list of ranges"),
    ({"ranges": [[]]}, r"ipam.ranges\[0\] is empty"),
    ({"ranges": [["10.0.0.0/24"]]}, r"ipam.ranges\[0\]\[0\] must be an object"),
    ({"ranges": [[{"rangeStart": "10.0.0.5"}]]}, r"ipam.ranges\[0\]\[0\].subnet is missing"),
    ({"ranges": [[{"subnet": 10}]]}, r"ipam.ranges\[0\]\[0\].subnet must be a CIDR string, got 10"),
    ({"ranges": [[{"subnet": "10.0.0.300/24"}]]}, r"ipam.ranges\[0\]\[0\].subnet '10.0.0.300/24' is not a CIDR"),
    ({"ranges": [[{"subnet": "10.0.0.5/24"}]]}, r"ipam.ranges\[0\]\[0\].subnet 10.0.0.5/24 has host bits set"),
    ({"ranges": [[{"subnet": "10.0.0.0"}]]}, r"needs a prefix length"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": 5}]]}, r"ipam.ranges\[0\]\[0\].gateway must be an IP"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "x"}]]},
     r"ipam.ranges\[0\]\[0\].rangeStart 'x' is not an IP address"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.5"}]]},
     r"ipam.ranges\[0\]\[0\]: rangeEnd 10.0.1.5 is not inside subnet 10.0.0.0/24"),
    ({"subnet": "10.0.0.0/32"}, r"ipam: subnet 10.0.0.0/32 is too small"),
    ({"rangeStart": "10.0.0.5"}, r"ipam.subnet is missing"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}, r"overlap"),
    ("x", r"ipam must be an object"),
])
def test_parse_errors(ipam, msg):
    with pytest.raises(Invalid, match=msg):
        parse_ipam_ranges(ipam)


# -- issue 8, bug 7 ----------------------------------------------------------------------

@pytest.mark.parametrize("subnet,needle", [
    ("0.0.0.0/0", "is every address"), ("::/0", "is every address"), ("0.0.0.0/1", "0.0.0.0/8"),
    ("128.0.0.0/1", "multicast"), ("127.0.0.0/24", "loopback"), ("::/64", "loopback"), ("ff00::/64", "multicast"),
])
def test_subnet_of_every_address_or_reserved_is_invalid(subnet, needle):
    # normalize_range is what create_network runs: the CLI's --subnet and Docker's pools too.
    with pytest.raises(Invalid, match=needle):
        normalize_range(IPRange(N(subnet)))


@pytest.mark.parametrize("value", ["10.1.0.0/24\n", " 10.1.0.0/24", "10.1.0.0/24 ", "0.0.0.0/0", "::/0"])
def test_parsed_subnet_with_whitespace_or_of_every_address_is_invalid(value):
    with pytest.raises(Invalid, match=r"ipam\.subnet"):
        parse_ipam_ranges({"subnet": value})
    with pytest.raises(Invalid, match=r"ipam\.ranges\[0\]\[0\]\.subnet"):
        parse_ipam_ranges({"ranges": [[{"subnet": value}]]})


@pytest.mark.parametrize("ip,what", [("10.1.0.0", "network"), ("10.1.0.255", "broadcast")])
def test_requested_network_or_broadcast_address_says_so(ip, what):
    with pytest.raises(Invalid, match=f"{ip} is the {what} address of 10.1.0.0/24"):
        next_free((normalize_range(IPRange(N("10.1.0.0/24"))),), set(), None, A(ip))


def test_requested_v6_network_address_says_so():
    with pytest.raises(Invalid, match="fd00:1:: is the network address of fd00:1::/64"):
        next_free((normalize_range(IPRange(N("fd00:1::/64"))),), set(), None, A("fd00:1::"))

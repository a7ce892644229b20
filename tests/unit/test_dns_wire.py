"""The DNS wire format (dns/wire.py) against an independent codec (dnspython)."""

from __future__ import annotations

import ipaddress

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, strategies as st

from muslin.dns import wire


def q(name: str, rdtype: str = "A", **kw) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()


def test_parse_a_query_keeps_the_case_as_asked():
    m = dns.message.make_query("WeB.Example.", "AAAA")
    p = wire.parse_query(m.to_wire())
    assert (p.id, p.name, p.key, p.qtype, p.qclass, p.edns) == (m.id, "WeB.Example", "web.example", wire.AAAA,
                                                                  wire.IN, False)
    assert p.max_udp() == 512


def test_edns_payload_is_read_and_bounded():
    p = wire.parse_query(q("a.", use_edns=0, payload=1400))
    assert p.edns and p.payload == 1400 and p.max_udp() == 1400
    assert wire.parse_query(q("a.", use_edns=0, payload=65000)).max_udp() == wire.UDP_MAX
    assert wire.parse_query(q("a.", use_edns=0, payload=100)).max_udp() == 512


def test_reply_with_addresses_reads_back():
    m = dns.message.make_query("Db.", "A")
    p = wire.parse_query(m.to_wire())
    ips = [ipaddress.ip_address(f"10.0.0.{i}") for i in (1, 2, 3)]
    r = dns.message.from_wire(wire.reply(p, wire.NOERROR, [wire.address_rr(i, 5) for i in ips]))
    assert r.id == m.id and r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.QR and r.flags & dns.flags.RA
    assert str(r.question[0].name) == "Db."  # echoed as asked (0x20 randomisation keeps working)
    (rrset,) = r.answer
    assert rrset.ttl == 5 and sorted(str(x) for x in rrset) == [str(i) for i in ips]


def test_ptr_and_aaaa_records():
    p = wire.parse_query(q("2.0.0.10.in-addr.arpa.", "PTR"))
    r = dns.message.from_wire(wire.reply(p, wire.NOERROR, [wire.ptr_rr("db.web", 5)]))
    assert [str(x) for x in r.answer[0]] == ["db.web."]
    p6 = wire.parse_query(q("x.", "AAAA"))
    r6 = dns.message.from_wire(wire.reply(p6, wire.NOERROR, [wire.address_rr(ipaddress.ip_address("fd00::5"), 5)]))
    assert [str(x) for x in r6.answer[0]] == ["fd00::5"]


def test_over_512_bytes_on_udp_sets_tc_and_keeps_what_fits():
    p = wire.parse_query(q("many."))
    rrs = [wire.address_rr(ipaddress.ip_address(f"10.1.0.{i}"), 5) for i in range(1, 60)]
    out = wire.reply(p, wire.NOERROR, rrs, p.max_udp())
    assert len(out) <= 512
    r = dns.message.from_wire(out)
    assert r.flags & dns.flags.TC and 0 < len(r.answer[0]) < 59
    full = dns.message.from_wire(wire.reply(p, wire.NOERROR, rrs, wire.TCP_MAX))
    assert not full.flags & dns.flags.TC and len(full.answer[0]) == 59


def test_edns_query_gets_an_opt_record_and_its_payload():
    p = wire.parse_query(q("many.", use_edns=0, payload=1232))
    rrs = [wire.address_rr(ipaddress.ip_address(f"10.1.0.{i}"), 5) for i in range(1, 60)]
    r = dns.message.from_wire(wire.reply(p, wire.NOERROR, rrs, p.max_udp()))
    assert r.edns == 0 and not r.flags & dns.flags.TC and len(r.answer[0]) == 59


def test_garbage_gets_formerr_or_nothing():
    assert wire.error_reply(b"\x01", wire.FORMERR) is None
    bad = bytes.fromhex("abcd0100000200000000000000")  # two questions announced, none there
    r = wire.error_reply(bad, wire.FORMERR)
    assert r[:2] == b"\xab\xcd" and wire.rcode_of(r) == wire.FORMERR
    resp = dns.message.make_response(dns.message.make_query("a.", "A")).to_wire()
    with pytest.raises(wire.WireError):
        wire.parse_query(resp)
    assert wire.error_reply(resp, wire.FORMERR) is None  # never answer an answer


def test_pointer_loops_and_overruns_are_refused():
    loop = bytes.fromhex("000100000001000000000000") + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    with pytest.raises(wire.WireError):
        wire.parse_query(loop)
    with pytest.raises(wire.WireError):
        wire.parse_query(bytes.fromhex("000100000001000000000000") + b"\x05ab")


def test_truncate_an_upstream_answer():
    m = dns.message.make_query("big.", "TXT")
    r = dns.message.make_response(m)
    r.answer.append(dns.rrset.from_text("big.", 60, "IN", "TXT", *[f'"{c * 200}"' for c in "abcde"]))
    data = r.to_wire()
    assert len(data) > 512
    cut = wire.truncate(data, 512)
    back = dns.message.from_wire(cut)
    assert back.flags & dns.flags.TC and not back.answer and str(back.question[0].name) == "big."
    assert wire.truncate(data, 4096) == data


def test_reverse_names():
    assert str(wire.reverse_address("5.0.22.10.in-addr.arpa")) == "10.22.0.5"
    v6 = ipaddress.ip_address("fd00:23::7")
    assert wire.reverse_address(v6.reverse_pointer) == v6
    assert wire.reverse_address("1.2.in-addr.arpa") is None and wire.reverse_address("web") is None


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_wireerror(data):
    try:
        wire.parse_query(data)
    except wire.WireError:
        pass
    wire.error_reply(data, wire.FORMERR)

"""The name table (dns/records.py) and the local answers (dns/answer.py): pure."""

from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
import dns.rcode
from hypothesis import given, settings, strategies as st

from muslin.dns import wire
from muslin.dns.answer import answer
from muslin.dns.records import DnsEndpoint, NameTable, NetInfo, client_config, listen_addresses, remote
from muslin.model.types import Endpoint, IPRange, Network

ip = ipaddress.ip_address
A_NET = Network("a", range_sets=((IPRange(ipaddress.ip_network("10.1.0.0/24")),),
                                 (IPRange(ipaddress.ip_network("fd00:1::/64")),)))
B_NET = Network("b", range_sets=((IPRange(ipaddress.ip_network("10.2.0.0/24")),),))
I_NET = Network("i", internal=True, range_sets=((IPRange(ipaddress.ip_network("10.3.0.0/24")),),))


def ep(net: str, sandbox: str, names: tuple[str, ...], *addrs: str) -> DnsEndpoint:
    return DnsEndpoint(net, sandbox, names, tuple(ip(a) for a in addrs))


def table() -> NameTable:
    t = NameTable()
    t.set_networks([NetInfo.of(A_NET), NetInfo.of(B_NET), NetInfo.of(I_NET)])
    t.put("a/web", ep("a", "sb-web", ("web", "www"), "10.1.0.2", "fd00:1::2"))
    t.put("a/db", ep("a", "sb-db", ("db",), "10.1.0.3"))
    t.put("b/db", ep("b", "sb-db", ("db",), "10.2.0.3"))  # the same sandbox on two networks
    t.put("b/cache", ep("b", "sb-cache", ("cache",), "10.2.0.4"))
    t.put("i/x", ep("i", "sb-x", ("x",), "10.3.0.2"))
    return t


def test_a_name_is_seen_only_from_its_networks():
    t = table()
    from_web = t.visible("a", ip("10.1.0.2"))
    assert from_web == ["a"]
    assert t.resolve("cache", 4, from_web).exists is False  # cache is only on b
    assert t.resolve("cache", 4, t.visible("b", ip("10.2.0.4"))).addresses == [ip("10.2.0.4")]
    # db is on a and b: it sees both, the network it asked on first
    assert t.visible("b", ip("10.2.0.3")) == ["b", "a"]
    assert t.resolve("web", 4, t.visible("b", ip("10.2.0.3"))).addresses == [ip("10.1.0.2")]
    # a client on b asking a's gateway still sees only b (its own sandbox's networks)
    assert t.visible("a", ip("10.2.0.4")) == ["b"]
    # an unknown client sees the network it asks on when it is inside its subnets (the host), else nothing
    assert t.visible("a", ip("10.1.0.1")) == ["a"] and t.visible("a", ip("192.0.2.1")) == []


def test_names_aliases_and_name_dot_network_any_case():
    t = table()
    v = t.visible("a", ip("10.1.0.3"))
    for name in ("web", "www", "web.a", "WWW.A".lower()):
        assert t.resolve(name, 4, v).addresses == [ip("10.1.0.2")], name
    assert t.resolve("web.b", 4, v).exists is False


def test_name_without_the_family_exists_with_no_address():
    t = table()
    v = t.visible("a", ip("10.1.0.2"))
    got = t.resolve("db", 6, v)
    assert got.exists and got.addresses == []
    assert t.resolve("web", 6, v).addresses == [ip("fd00:1::2")]


def test_a_shared_alias_gives_every_address():
    t = table()
    for i in range(3):
        t.put(f"a/s{i}", ep("a", f"s{i}", (f"s{i}", "shared"), f"10.1.0.{10 + i}"))
    got = t.resolve("shared", 4, ["a"]).addresses
    assert sorted(got) == [ip("10.1.0.10"), ip("10.1.0.11"), ip("10.1.0.12")]
    t.remove("a/s1")
    assert sorted(t.resolve("shared", 4, ["a"]).addresses) == [ip("10.1.0.10"), ip("10.1.0.12")]


def test_ptr_for_endpoint_addresses_of_visible_networks():
    t = table()
    assert t.reverse(ip("10.1.0.2"), ["a"]) == ["web.a"]
    assert t.reverse(ip("10.2.0.4"), ["a"]) == []


def test_internal_and_listen_and_client_config():
    t = table()
    assert t.internal("i") and not t.internal("a")
    assert t.listen() == {ip("10.1.0.1"): "a", ip("fd00:1::1"): "a", ip("10.2.0.1"): "b", ip("10.3.0.1"): "i"}
    assert listen_addresses(Network("m", driver="macvlan", range_sets=B_NET.range_sets)) == ()
    assert listen_addresses(B_NET.evolve(is_gateway=False, is_default_gateway=False)) == ()
    assert client_config([A_NET, B_NET]) == (["10.1.0.1", "fd00:1::1", "10.2.0.1"], ["a", "b"])


def test_endpoint_identity_and_remote_records():
    e = Endpoint("a", "c1/eth0", "c1", "eth0", "/run/netns/x", "mv1", "02:00:00:00:00:01",
                 (ipaddress.ip_interface("10.1.0.9/24"),), aliases=("api", "bad name!"), name="c1")
    d = DnsEndpoint.of(e)
    assert d.names == ("c1", "api") and d.sandbox == "/run/netns/x" and d.addresses == (ip("10.1.0.9"),)
    r = remote("a", "h2", {"sandbox": "s", "name": "far", "aliases": ["f"], "addresses": ["10.9.0.2/24"]})
    assert r == DnsEndpoint("a", "h2:s", ("far", "f"), (ip("10.9.0.2"),))
    assert remote("a", "h2", {"addresses": ["nonsense"]}) is None


def ask(t: NameTable, name: str, rdtype: str, net: str, client: str, **kw):
    m = dns.message.make_query(name, rdtype, **kw)
    out = answer(t, wire.parse_query(m.to_wire()), net, ip(client))
    return None if out is None else dns.message.from_wire(out)


def test_answers_from_the_table():
    t = table()
    r = ask(t, "WEB.", "A", "a", "10.1.0.3")
    assert r.rcode() == dns.rcode.NOERROR and [str(x) for x in r.answer[0]] == ["10.1.0.2"]
    assert r.answer[0].ttl <= 5 and r.flags & dns.flags.AA
    r6 = ask(t, "db.", "AAAA", "a", "10.1.0.2")
    assert r6.rcode() == dns.rcode.NOERROR and not r6.answer
    ptr = ask(t, "2.0.1.10.in-addr.arpa.", "PTR", "a", "10.1.0.3")
    assert [str(x) for x in ptr.answer[0]] == ["web.a."]
    mx = ask(t, "web.", "MX", "a", "10.1.0.3")
    assert mx.rcode() == dns.rcode.NOERROR and not mx.answer


def test_unknown_names_and_types_go_upstream_except_from_internal_networks():
    t = table()
    assert ask(t, "example.org.", "A", "a", "10.1.0.2") is None
    assert ask(t, "web.", "TXT", "a", "10.1.0.3") is None
    assert ask(t, "cache.", "A", "a", "10.1.0.2") is None  # not visible from a: upstream decides
    r = ask(t, "example.org.", "A", "i", "10.3.0.2")
    assert r.rcode() == dns.rcode.SERVFAIL
    assert ask(t, "x.", "A", "i", "10.3.0.2").answer  # its own names still answer


def test_shuffled_on_every_answer():
    t = table()
    for i in range(3):
        t.put(f"a/s{i}", ep("a", f"s{i}", ("shared",), f"10.1.0.{10 + i}"))
    seen = set()
    for _ in range(200):
        r = ask(t, "shared.", "A", "a", "10.1.0.2")
        seen.add(tuple(str(x) for x in r.answer[0]))
    assert len(seen) == 6  # every order of three


def test_truncated_over_udp_not_over_tcp():
    t = NameTable()
    t.set_networks([NetInfo.of(A_NET)])
    for i in range(40):
        t.put(f"a/{i}", ep("a", f"s{i}", ("many",), f"10.1.0.{10 + i}"))
    m = dns.message.make_query("many.", "A")
    q = wire.parse_query(m.to_wire())
    udp = dns.message.from_wire(answer(t, q, "a", ip("10.1.0.10")))
    assert udp.flags & dns.flags.TC and len(udp.answer[0]) < 40
    tcp = dns.message.from_wire(answer(t, q, "a", ip("10.1.0.10"), tcp=True))
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 40


ops = st.lists(st.tuples(st.sampled_from(["put", "remove"]), st.integers(0, 5), st.sampled_from("ab"),
                         st.integers(0, 3), st.sampled_from(["x", "y", "z"])), max_size=40)


@settings(max_examples=200)
@given(ops)
def test_changes_in_place_equal_a_table_built_afresh(seq):
    t = NameTable()
    live: dict[str, DnsEndpoint] = {}
    for op, k, net, host, name in seq:
        key = f"k{k}"
        if op == "put":
            e = ep(net, f"sb{k % 3}", (name, f"{name}{host}"), f"10.{ord(net)}.{host}.{k + 1}")
            t.put(key, e)
            live[key] = e
        else:
            t.remove(key)
            live.pop(key, None)
    fresh = NameTable()
    fresh.replace_all(live)

    def norm(tb: NameTable):
        return ({n: {k: sorted(v) for k, v in d.items()} for n, d in tb.names.items()},
                {a: sorted(v) for a, v in tb.by_addr.items()}, {s: sorted(v) for s, v in tb.sandbox_nets.items()},
                tb.endpoints)
    assert norm(t) == norm(fresh)

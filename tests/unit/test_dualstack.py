"""Dual-stack and IPv6-only cluster networks, the pure parts and the leasing on a
MemoryStore: the config's families and its validation, records that carry an IPv6 subnet
and underlay (and read as before without them), both subnets leased in one txn, and each
backend's IPv6 objects (vxlan neighbours and routes, vxlan over an IPv6 underlay, host-gw
routes via IPv6 underlay addresses, BIRD's IPv6 channel, WireGuard allowed-ips)."""

from __future__ import annotations

import ipaddress

import pytest

from muslin.backends import bgp, hostgw, vxlan, wireguard
from muslin.backends.model import ClusterConfig, HostRecord, Local, owned
from muslin.backends.vxlan import vtep_mac
from muslin.control.agent import Agent, check_underlay, init_config, list_hosts
from muslin.model.errors import Conflict, Exhausted, Invalid
from muslin.model.kernel import FdbSpec, NeighSpec, Observed, RouteSpec
from muslin.store.memory import MemoryStore

DUAL = ClusterConfig("n", cidr6="fd00:10::/48")


def rec(h: str, n: int, v6: bool = True) -> HostRecord:
    r = HostRecord(h, f"10.244.{n}.0/24", f"10.250.0.{n + 1}", "10.250.0.0/24",
                   subnet6=str(ipaddress.ip_network(f"fd00:10:0:{n:x}::/64")) if v6 else "",
                   underlay6=f"fd00:250::{n + 1}",
                   underlay_net6="fd00:250::/64")
    return HostRecord(**{**r.__dict__, "published": vxlan.BACKEND.publish(DUAL, r, {})})


@pytest.mark.parametrize("kw, msg", [
    ({"cidr6": "fd00:10::/48", "host_prefix6": 40}, "IPv6 host prefix /40 must be between /48"),
    ({"cidr6": "fd00:10::/48", "host_prefix6": 127}, "and /126"),
    ({"cidr6": "10.1.0.0/16"}, "is not an IPv6 network"),
    ({"cidr6": "nonsense"}, "is not a network"),
    ({"cidr": "fd00:9::/48", "host_prefix": 64, "cidr6": "fd00:10::/48"}, "must be IPv4 when cidr6 is given"),
    ({"cidr": "fd00:9::/48", "host_prefix": 40}, "host prefix /40"),
])
def test_bad_dual_stack_configs_name_the_field(kw, msg):
    with pytest.raises(Invalid, match=msg):
        ClusterConfig("n", **kw).validate()


def test_families_capacity_and_the_stored_shape():
    assert [(str(c), p) for c, p in DUAL.families()] == [("10.244.0.0/16", 24), ("fd00:10::/48", 64)]
    assert DUAL.has_ipv6 and DUAL.capacity() == 256  # the smaller family
    only6 = ClusterConfig("n", cidr="fd00:10::/48", host_prefix=64).validate()
    assert only6.has_ipv6 and only6.capacity() == 65536 and [c.version for c in only6.cidrs] == [6]
    assert "cidr6" not in ClusterConfig("n").to_dict()  # single-stack configs read as before
    assert ClusterConfig.from_dict(DUAL.to_dict()) == DUAL


def test_records_round_trip_and_older_records_read_as_single_stack():
    r = rec("a", 1)
    assert HostRecord.from_dict(r.to_dict()) == r and r.subnets == ("10.244.1.0/24", "fd00:10:0:1::/64")
    assert r.subnet_of(6) == "fd00:10:0:1::/64" and r.subnet_of(4) == "10.244.1.0/24"
    old = {"hostname": "b", "subnet": "10.244.2.0/24", "underlay": "10.250.0.3"}
    assert HostRecord.from_dict(old).subnets == ("10.244.2.0/24",)
    assert "subnet6" not in HostRecord.from_dict(old).to_dict()


def agent(store, host, tmp_path, cfg=DUAL):
    a = Agent(store, "n", host, tmp_path / host, log=lambda m: None)
    a.cfg = cfg
    a.underlay_dev = "eth0"
    return a


def test_both_subnets_are_leased_together_and_kept_on_restart(tmp_path):
    s = MemoryStore()
    init_config(s, DUAL)
    a, b = agent(s, "a", tmp_path), agent(s, "b", tmp_path)
    a.register("10.0.0.1", "10.0.0.0/24", 1500, "fd00:250::1", "fd00:250::/64")
    b.register("10.0.0.2", "10.0.0.0/24", 1500, "fd00:250::2", "fd00:250::/64")
    ra, rb = a.local.record, b.local.record
    assert ipaddress.ip_network(ra.subnet6).prefixlen == 64 and ra.subnet6 != rb.subnet6
    assert ra.underlay6 == "fd00:250::1"
    keys = {kv.key: kv.lease for kv in s.list("cluster/n/subnets/")}
    assert len(keys) == 4 and keys[f"cluster/n/subnets/{ra.subnet6.replace('/', '_')}"] == a.lease
    again = agent(s, "a", tmp_path)
    again.register("10.0.0.1", "10.0.0.0/24", 1500, "fd00:250::1", "fd00:250::/64")
    assert again.local.record == ra and again.lease == a.lease
    a.leave()
    assert len(list(s.list("cluster/n/subnets/"))) == 2 and sorted(list_hosts(s, "n")) == ["b"]


def test_a_full_ipv6_family_leases_neither(tmp_path):
    s = MemoryStore()
    small = ClusterConfig("n", cidr6="fd00:10::/64", host_prefix6=64)
    agent(s, "a", tmp_path, small).register("10.0.0.1", "10.0.0.0/24", 1500)
    with pytest.raises(Exhausted, match="no free /64 left in fd00:10::/64 for host b"):
        agent(s, "b", tmp_path, small).register("10.0.0.2", "10.0.0.0/24", 1500)
    assert sorted(list_hosts(s, "n")) == ["a"] and len(list(s.list("cluster/n/subnets/"))) == 2


def test_a_config_change_of_family_is_refused_naming_it():
    s = MemoryStore()
    init_config(s, ClusterConfig("n"))
    with pytest.raises(Conflict, match=r"cidr6 \(none\) -> fd00:10::/48"):
        init_config(s, DUAL)
    assert "cidr6" not in s.get("cluster/n/config").value


def test_a_cidr_overlapping_the_underlay_is_refused():
    with pytest.raises(Invalid, match="fd00::/16 overlaps the underlay subnet fd00:250::/64"):
        check_underlay(ClusterConfig("n", cidr6="fd00::/16"), ["10.250.0.0/24", "fd00:250::/64"])
    check_underlay(DUAL, ["10.250.0.0/24", "fd00:250::/64"])


ME = Local(rec("h0", 0), "eth0", 1500)
PEERS = [rec("h0", 0), rec("h1", 1), rec("h2", 2)]


def test_vxlan_routes_both_families_over_one_device_without_ipv6_addresses():
    d = vxlan.BACKEND.desired(DUAL, ME, PEERS)
    (vx,) = d.devices
    assert vx.ipv6 and vx.address == "10.244.0.0/32" and vx.local == "10.250.0.1"
    assert RouteSpec("fd00:10:0:1::/64", "fd00:10:0:1::", "mx-n", True) in d.routes
    assert NeighSpec("mx-n", "fd00:10:0:1::", vtep_mac("n", "h1")) in d.neighs
    assert len(d.routes) == 4 and len(d.neighs) == 4 and not d.problems
    # a peer of an older agent (no IPv6 subnet): IPv4 to it still, and a problem naming it
    d = vxlan.BACKEND.desired(DUAL, ME, [rec("h1", 1), rec("old", 3, v6=False)])
    assert RouteSpec("10.244.3.0/24", "10.244.3.0", "mx-n", True) in d.routes and len(d.routes) == 3
    assert any("peer old: it has no IPv6 subnet" in p for p in d.problems)
    # the routes of both families count as the network's (the resync's diff keeps them)
    obs = Observed(frozenset(d.routes | {RouteSpec("fd00:99::/64", "", "x")}))
    assert owned(obs, DUAL.cidrs).routes == d.routes


def test_vxlan_over_an_ipv6_underlay():
    cfg = ClusterConfig("n", cidr6="fd00:10::/48", options={"underlay": "ipv6"}).validate()
    d = vxlan.BACKEND.desired(cfg, ME, PEERS)
    (vx,) = d.devices
    assert vx.local == "fd00:250::1" and d.network_mtu == 1430  # 70 bytes of IPv6 + UDP + VXLAN
    assert FdbSpec("mx-n", vtep_mac("n", "h1"), "fd00:250::2") in d.fdb
    assert all(":" in f.dst for f in d.fdb)
    with pytest.raises(Invalid, match="option underlay must be ipv4 or ipv6"):
        ClusterConfig("n", options={"underlay": "ipv5"}).validate()
    bare = Local(HostRecord("h0", "10.244.0.0/24", "10.250.0.1", subnet6="fd00:10::/64"), "eth0", 1500)
    assert "has no IPv6 underlay address" in vxlan.BACKEND.desired(cfg, bare, PEERS).problems[0]


def test_host_gw_routes_ipv6_via_the_peers_ipv6_underlay():
    d = hostgw.BACKEND.desired(DUAL, ME, PEERS)
    assert RouteSpec("fd00:10:0:2::/64", "fd00:250::3", "eth0") in d.routes and len(d.routes) == 4
    far = HostRecord("far", "10.244.9.0/24", "10.250.0.10", subnet6="fd00:10:0:9::/64", underlay6="fd00:99::1")
    d = hostgw.BACKEND.desired(DUAL, ME, [far])
    assert d.routes == {RouteSpec("10.244.9.0/24", "10.250.0.10", "eth0")}
    assert "not on the directly connected underlay subnet fd00:250::/64" in d.problems[0]


def test_bird_has_an_ipv6_channel_with_sessions_over_the_ipv6_underlay():
    conf = bgp.bird_config(ClusterConfig("n", backend="bgp", cidr6="fd00:10::/48"), ME, PEERS)
    assert "route fd00:10::/64 blackhole;" in conf and "protocol kernel muslin_kernel6" in conf
    assert "local fd00:250::1 as 64512;" in conf and "bgp_next_hop = fd00:250::1" in conf
    assert "protocol bgp peer6_h1 from muslin_peer6 { neighbor fd00:250::2 as 64512; }" in conf
    assert "protocol bgp peer_h1 from muslin_peer { neighbor 10.250.0.2 as 64512; }" in conf
    assert "router id 10.250.0.1;" in conf


def test_wireguard_allows_and_routes_both_subnets():
    facts = {"ifname": "mw-n", "public_key": "A" * 43 + "=", "key_file": "/k"}
    me = Local(ME.record, "eth0", 1500, facts)
    peers = [HostRecord(**{**rec(f"h{n}", n).__dict__, "published": {"public_key": chr(66 + n) * 43 + "=",
                                                                       "endpoint": f"10.250.0.{n + 1}:51820"}})
             for n in (1, 2)]
    d = wireguard.BACKEND.desired(ClusterConfig("n", backend="wireguard", cidr6="fd00:10::/48"), me, peers)
    p1 = next(p for p in d.peers if p.endpoint.startswith("10.250.0.2"))
    assert p1.allowed_ips == ("10.244.1.0/24", "10.250.0.2/32", "fd00:10:0:1::/64", "fd00:250::2/128")
    assert RouteSpec("fd00:10:0:1::/64", "", "mw-n") in d.routes


def test_vxlan_over_ipv6_on_an_ipv4_only_network_publishes_the_ipv6_underlay(tmp_path):
    """The tunnel over IPv6 needs each host's IPv6 underlay address, even when the network
    itself carries IPv4 only (Backend.wants_underlay6)."""
    cfg = ClusterConfig("n", options={"underlay": "ipv6"}).validate()
    assert not cfg.has_ipv6 and vxlan.BACKEND.wants_underlay6(cfg) and not hostgw.BACKEND.wants_underlay6(cfg)
    s = MemoryStore()
    a, b = agent(s, "a", tmp_path, cfg), agent(s, "b", tmp_path, cfg)
    a.register("10.0.0.1", "10.0.0.0/24", 1500, "fd00:250::1", "fd00:250::/64")
    b.register("10.0.0.2", "10.0.0.0/24", 1500, "fd00:250::2", "fd00:250::/64")
    assert a.local.record.underlay6 == "fd00:250::1" and not a.local.record.subnet6
    d = vxlan.BACKEND.desired(cfg, a.local, [b.local.record])
    (vx,) = d.devices
    assert vx.local == "fd00:250::1" and not vx.ipv6 and not d.problems
    assert FdbSpec("mx-n", vtep_mac("n", "b"), "fd00:250::2") in d.fdb

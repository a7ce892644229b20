"""Pure parts of the multi-host backends: desired state, diff, BIRD config, validation."""

from __future__ import annotations

import pytest

from muslin.backends import bgp, hostgw, vxlan
from muslin.backends.model import ClusterConfig, HostRecord, Local, diff, owned, vtep_mac
from muslin.model.kernel import FdbSpec, NeighSpec, Observed, RouteSpec
from muslin.backends.registry import desired_state
from muslin.model.errors import Invalid
import ipaddress


def rec(h: str, n: int, net: str = "blue") -> HostRecord:
    return HostRecord(h, f"10.244.{n}.0/24", f"10.250.0.{n + 1}", "10.250.0.0/24", vtep_mac(net, h), f"10.244.{n}.0")


CFG = ClusterConfig("blue", vni=7)
ME = Local(rec("h0", 0), "eth0", 1500)
PEERS = [rec("h0", 0), rec("h1", 1), rec("h2", 2)]


def test_vxlan_desired_per_peer_entries():
    d = vxlan.desired(CFG, ME, PEERS)
    assert d.vxlan.vni == 7 and d.vxlan.mtu == 1450 and d.network_mtu == 1450
    assert d.vxlan.address == "10.244.0.0/32" and d.vxlan.local == "10.250.0.1"
    assert d.routes == {RouteSpec("10.244.1.0/24", "10.244.1.0", "mx-blue", True),
                        RouteSpec("10.244.2.0/24", "10.244.2.0", "mx-blue", True)}
    assert NeighSpec("mx-blue", "10.244.1.0", vtep_mac("blue", "h1")) in d.neighs
    assert d.fdb == {FdbSpec("mx-blue", vtep_mac("blue", h), f"10.250.0.{n + 1}") for h, n in (("h1", 1), ("h2", 2))} | {
        FdbSpec("mx-blue", "00:00:00:00:00:00", f"10.250.0.{n}") for n in (2, 3)}


def test_diff_is_noop_when_kernel_matches_and_minimal_otherwise():
    d = vxlan.desired(CFG, ME, PEERS)
    obs = Observed(d.routes, d.neighs, d.fdb, d.vxlan)
    assert diff(d, obs).empty
    # one peer gone: only its entries go
    d2 = vxlan.desired(CFG, ME, PEERS[:2])
    ch = diff(d2, obs)
    assert ch.del_routes == (RouteSpec("10.244.2.0/24", "10.244.2.0", "mx-blue", True),)
    assert len(ch.del_fdb) == 2 and len(ch.del_neighs) == 1 and not ch.add_routes and not ch.vxlan_create
    # a route deleted by hand comes back, nothing else changes
    ch = diff(d, Observed(d.routes - {next(iter(d.routes))}, d.neighs, d.fdb, d.vxlan))
    assert len(ch.add_routes) == 1 and ch.summary() == "add routes 1"


def test_diff_recreates_device_on_vni_change_and_reprograms():
    d = vxlan.desired(CFG, ME, PEERS)
    old = d.vxlan.__class__(**{**d.vxlan.__dict__, "vni": 99})
    ch = diff(d, Observed(d.routes, d.neighs, d.fdb, old))
    assert ch.vxlan_delete == "mx-blue" and ch.vxlan_create == d.vxlan
    assert set(ch.add_fdb) == d.fdb and set(ch.add_routes) == d.routes
    mtu_only = d.vxlan.__class__(**{**d.vxlan.__dict__, "mtu": 1500})
    ch = diff(d, Observed(d.routes, d.neighs, d.fdb, mtu_only))
    assert ch.vxlan_update == d.vxlan and not ch.vxlan_create


def test_owned_keeps_other_networks_routes_out_of_the_diff():
    other = RouteSpec("10.9.1.0/24", "10.9.1.0", "mx-red", True)
    obs = owned(Observed(frozenset({other})), ipaddress.IPv4Network("10.244.0.0/16"))
    assert obs.routes == frozenset()


def test_two_networks_same_subnet_differ_in_vni_and_device():
    red = ClusterConfig("red", vni=8)
    a = vxlan.desired(CFG, ME, PEERS).vxlan
    b = vxlan.desired(red, Local(rec("h0", 0, "red"), "eth0", 1500), []).vxlan
    assert (a.name, a.vni) != (b.name, b.vni) and a.mac != b.mac


def test_host_gw_routes_and_unreachable_peer():
    d = hostgw.desired(ClusterConfig("g", backend="host-gw"), ME, PEERS)
    assert d.routes == {RouteSpec("10.244.1.0/24", "10.250.0.2", "eth0"), RouteSpec("10.244.2.0/24", "10.250.0.3", "eth0")}
    far = HostRecord("far", "10.244.9.0/24", "192.168.7.1", "192.168.7.0/24")
    with pytest.raises(Invalid, match="not on the directly connected underlay subnet 10.250.0.0/24"):
        hostgw.check_peer(ME, far)
    d = hostgw.desired(ClusterConfig("g", backend="host-gw"), ME, PEERS + [far])
    assert len(d.routes) == 2 and len(d.problems) == 1 and "far" in d.problems[0]
    assert d.network_mtu == 1500


def test_bgp_full_mesh_and_route_reflector():
    cfg = ClusterConfig("b", backend="bgp", asn=64600)
    conf = bgp.bird_config(cfg, ME, PEERS)
    assert "router id 10.250.0.1;" in conf and "route 10.244.0.0/24 blackhole;" in conf
    assert "neighbor 10.250.0.2 as 64600" in conf and "neighbor 10.250.0.3 as 64600" in conf
    assert "rr client" not in conf and "export where source = RTS_BGP" in conf
    rr = ClusterConfig("b", backend="bgp", route_reflectors=("h1",))
    leaf = bgp.bird_config(rr, ME, PEERS)
    assert "neighbor 10.250.0.2" in leaf and "neighbor 10.250.0.3" not in leaf
    refl = bgp.bird_config(rr, Local(rec("h1", 1), "eth0", 1500), PEERS)
    assert refl.count("rr client") == 2
    d = desired_state(cfg, ME, PEERS)
    assert not d.routes and d.vxlan is None and d.bird_config == conf


@pytest.mark.parametrize("kw,msg", [
    ({"backend": "wireguard"}, "unknown backend 'wireguard'"),
    ({"cidr": "10.0.0.0/33"}, "is not a network"),
    ({"cidr": "10.0.0.0/24", "host_prefix": 16}, "host prefix /16"),
    ({"vni": 0}, "VNI 0"),
])
def test_config_validation(kw, msg):
    with pytest.raises(Invalid, match=msg):
        ClusterConfig("n", **kw).validate()


def test_config_roundtrip_and_unknown_keys():
    c = ClusterConfig("n", backend="bgp", route_reflectors=("h1",))
    assert ClusterConfig.from_dict(c.to_dict()) == c
    with pytest.raises(Invalid, match="unknown key"):
        ClusterConfig.from_dict({**c.to_dict(), "colour": "red"})
    assert ClusterConfig("n", cidr="10.0.0.0/22", host_prefix=24).capacity() == 4


def test_vtep_mac_stable_unicast_local():
    m = vtep_mac("n", "h1")
    assert m == vtep_mac("n", "h1") != vtep_mac("n", "h2")
    first = int(m.split(":")[0], 16)
    assert first & 1 == 0 and first & 2 == 2

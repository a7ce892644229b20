"""Pure parts of the multi-host backends: the one Backend interface and its registry,
desired state, diff (devices, entries, WireGuard peers as deltas), BIRD config, records
of older agents, validation."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from muslin.backends import bgp, hostgw, vxlan, wireguard
from muslin.backends.base import Backend
from muslin.backends.model import ClusterConfig, Desired, HostRecord, Local, diff, owned
from muslin.backends.registry import BACKENDS, get_backend
from muslin.backends.vxlan import vtep_mac
from muslin.model.errors import Invalid
from muslin.model.kernel import EgressGuard, FdbSpec, NeighSpec, Observed, Owned, RouteSpec, WgDev, WgPeer


def rec(h: str, n: int, net: str = "blue") -> HostRecord:
    return HostRecord(h, f"10.244.{n}.0/24", f"10.250.0.{n + 1}", "10.250.0.0/24",
                      {"vtep_mac": vtep_mac(net, h), "vtep_ip": f"10.244.{n}.0"})


def desired_state(cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> Desired:
    return get_backend(cfg.backend).desired(cfg, local, peers)


CFG = ClusterConfig("blue", vni=7)
ME = Local(rec("h0", 0), "eth0", 1500)
PEERS = [rec("h0", 0), rec("h1", 1), rec("h2", 2)]


def test_vxlan_desired_per_peer_entries():
    d = vxlan.BACKEND.desired(CFG, ME, PEERS)
    (vx,) = d.devices
    assert vx.vni == 7 and vx.mtu == 1450 and d.network_mtu == 1450
    assert vx.address == "10.244.0.0/32" and vx.local == "10.250.0.1" and vx.mac == vtep_mac("blue", "h0")
    assert d.routes == {RouteSpec("10.244.1.0/24", "10.244.1.0", "mx-blue", True),
                        RouteSpec("10.244.2.0/24", "10.244.2.0", "mx-blue", True)}
    assert NeighSpec("mx-blue", "10.244.1.0", vtep_mac("blue", "h1")) in d.neighs
    assert d.fdb == {FdbSpec("mx-blue", vtep_mac("blue", h), f"10.250.0.{n + 1}") for h, n in (("h1", 1), ("h2", 2))} | {
        FdbSpec("mx-blue", "00:00:00:00:00:00", f"10.250.0.{n}") for n in (2, 3)}


def test_diff_is_noop_when_kernel_matches_and_minimal_otherwise():
    d = vxlan.BACKEND.desired(CFG, ME, PEERS)
    obs = Observed(d.routes, d.neighs, d.fdb, d.devices)
    assert diff(d, obs).empty
    # one peer gone: only its entries go
    d2 = vxlan.BACKEND.desired(CFG, ME, PEERS[:2])
    ch = diff(d2, obs)
    assert ch.del_routes == (RouteSpec("10.244.2.0/24", "10.244.2.0", "mx-blue", True),)
    assert len(ch.del_fdb) == 2 and len(ch.del_neighs) == 1 and not ch.add_routes and not ch.create_devices
    # a route deleted by hand comes back, nothing else changes
    ch = diff(d, Observed(d.routes - {next(iter(d.routes))}, d.neighs, d.fdb, d.devices))
    assert len(ch.add_routes) == 1 and ch.summary() == "add routes 1"


def test_diff_recreates_device_on_vni_change_and_reprograms():
    d = vxlan.BACKEND.desired(CFG, ME, PEERS)
    (vx,) = d.devices
    old = dataclasses.replace(vx, vni=99)
    ch = diff(d, Observed(d.routes, d.neighs, d.fdb, (old,)))
    assert ch.delete_devices == ("mx-blue",) and ch.create_devices == (vx,)
    assert set(ch.add_fdb) == d.fdb and set(ch.add_routes) == d.routes and not ch.del_routes
    mtu_only = dataclasses.replace(vx, mtu=1500)
    ch = diff(d, Observed(d.routes, d.neighs, d.fdb, (mtu_only,)))
    assert ch.update_devices == (vx,) and not ch.create_devices and not ch.add_fdb


def test_owned_keeps_other_networks_routes_out_of_the_diff():
    other = RouteSpec("10.9.1.0/24", "10.9.1.0", "mx-red", True)
    obs = owned(Observed(frozenset({other})), ipaddress.IPv4Network("10.244.0.0/16"))
    assert obs.routes == frozenset()


def test_two_networks_same_subnet_differ_in_vni_and_device():
    red = ClusterConfig("red", vni=8)
    (a,) = vxlan.BACKEND.desired(CFG, ME, PEERS).devices
    (b,) = vxlan.BACKEND.desired(red, Local(rec("h0", 0, "red"), "eth0", 1500), []).devices
    assert (a.name, a.vni) != (b.name, b.vni) and a.mac != b.mac


def test_host_gw_routes_and_unreachable_peer():
    d = hostgw.BACKEND.desired(ClusterConfig("g", backend="host-gw"), ME, PEERS)
    assert d.routes == {RouteSpec("10.244.1.0/24", "10.250.0.2", "eth0"), RouteSpec("10.244.2.0/24", "10.250.0.3", "eth0")}
    far = HostRecord("far", "10.244.9.0/24", "192.168.7.1", "192.168.7.0/24")
    with pytest.raises(Invalid, match="not on the directly connected underlay subnet 10.250.0.0/24"):
        hostgw.check_peer(ME, far)
    d = hostgw.BACKEND.desired(ClusterConfig("g", backend="host-gw"), ME, PEERS + [far])
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
    assert not d.routes and not d.devices and d.companion_config("bird") == conf
    assert bgp.BACKEND.companions == ("bird",)


@pytest.mark.parametrize("kw,msg", [
    ({"backend": "geneve"}, "unknown backend 'geneve': expected one of vxlan, host-gw, bgp, wireguard"),
    ({"backend": "wireguard", "options": {"colour": 1}}, "unknown option.s. colour"),
    ({"backend": "wireguard", "options": {"port": 0}}, "port 0 is out of range"),
    ({"backend": "wireguard", "options": {"strict": 1}}, "option strict must be a bool"),
    ({"backend": "wireguard", "options": {"port": True}}, "option port must be an int"),
    ({"backend": "wireguard", "options": {"rotate_every": 3}}, "rotate_every 3 must be 0"),
    ({"backend": "vxlan", "options": {"port": 1}}, "backend vxlan: unknown option.s. port"),
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


# -- the interface and the registry --------------------------------------------------------

def test_every_backend_is_registered_by_its_name_and_speaks_the_one_interface():
    assert list(BACKENDS) == ["vxlan", "host-gw", "bgp", "wireguard"]
    for name, b in BACKENDS.items():
        assert isinstance(b, Backend) and b.name == name and get_backend(name) is b
        cfg = ClusterConfig("n", backend=name)
        local = Local(rec("h0", 0, "n"), "eth0", 1500, WG_FACTS if name == "wireguard" else {})
        me = local.record
        if name == "wireguard":
            local = Local(HostRecord(me.hostname, me.subnet, me.underlay, me.underlay_net,
                                     b.publish(cfg, me, WG_FACTS)), "eth0", 1500, WG_FACTS)
        d = b.desired(cfg, local, [])
        assert isinstance(d, Desired) and d.network_mtu == 1500 - b.overhead == b.network_mtu(cfg, local)
        assert set(b.companions) <= {"bird", "wireguard"}
        assert isinstance(b.owned("n", dict(local.facts)), Owned)
    assert [b.overhead for b in BACKENDS.values()] == [50, 0, 0, 80]
    with pytest.raises(Invalid, match="unknown backend 'x'"):
        get_backend("x")


def test_records_of_older_agents_read_with_their_vtep_and_new_records_keep_it_in_published():
    old = {"hostname": "h1", "subnet": "10.244.1.0/24", "underlay": "10.250.0.2", "underlay_net": "10.250.0.0/24",
           "vtep_mac": "02:aa:bb:cc:dd:ee", "vtep_ip": "10.244.1.0"}
    r = HostRecord.from_dict(old)
    assert r.get("vtep_mac") == "02:aa:bb:cc:dd:ee" and r.get("vtep_ip") == "10.244.1.0"
    assert r.to_dict()["published"] == {"vtep_mac": "02:aa:bb:cc:dd:ee", "vtep_ip": "10.244.1.0"}
    assert "vtep_mac" not in r.to_dict() and HostRecord.from_dict(r.to_dict()) == r
    d = vxlan.BACKEND.desired(CFG, ME, [r])
    assert NeighSpec("mx-blue", "10.244.1.0", "02:aa:bb:cc:dd:ee") in d.neighs
    assert vxlan.BACKEND.publish(CFG, ME.record, {}) == {"vtep_mac": vtep_mac("blue", "h0"), "vtep_ip": "10.244.0.0"}


def test_config_options_roundtrip_and_old_configs_have_none():
    c = ClusterConfig("n", backend="wireguard", options={"strict": False, "port": 51900})
    assert c.options == (("port", 51900), ("strict", False))
    assert ClusterConfig.from_dict(c.to_dict()) == c and c.to_dict()["options"] == {"port": 51900, "strict": False}
    assert "options" not in ClusterConfig("n").to_dict()  # older agents read it as before
    o = wireguard.BACKEND.options(c)
    assert (o.port, o.strict, o.keepalive, o.rotate_every) == (51900, False, 25, 0)


# -- wireguard -------------------------------------------------------------------------------

WG_FACTS = {"ifname": "mw-n-1a2b", "impl": "wireguard-go", "key_file": "/s/wireguard.key",
            "public_key": "PUB0=", "log": "/s/wg.log"}
WCFG = ClusterConfig("n", backend="wireguard")


def wrec(h: str, n: int, key: str = "") -> HostRecord:
    base = HostRecord(h, f"10.244.{n}.0/24", f"10.250.0.{n + 1}", "10.250.0.0/24")
    return dataclasses.replace(base, published=wireguard.BACKEND.publish(WCFG, base, {"public_key": key or f"PUB{n}="}))


WME = Local(wrec("h0", 0), "eth0", 1500, WG_FACTS)
WPEERS = [wrec("h0", 0), wrec("h1", 1), wrec("h2", 2)]


def test_wireguard_publishes_key_and_endpoint_never_the_key_file():
    assert wrec("h1", 1).to_dict()["published"] == {"public_key": "PUB1=", "endpoint": "10.250.0.2:51820"}
    port = ClusterConfig("n", backend="wireguard", options={"port": 51999})
    assert wireguard.BACKEND.publish(port, WME.record, WG_FACTS)["endpoint"] == "10.250.0.1:51999"
    assert wireguard.BACKEND.owned("n", WG_FACTS) == Owned(("mw-n-1a2b",), ("muslin-wg-n",))


def test_wireguard_desired_one_interface_a_peer_and_a_route_per_remote_host_and_strict_mode():
    d = wireguard.BACKEND.desired(WCFG, WME, WPEERS)
    assert d.devices == (WgDev("mw-n-1a2b", 51820, 1420, "PUB0=", userspace=True),)
    assert d.devices[0].key_file == "/s/wireguard.key" and d.network_mtu == 1420
    assert d.peers == {WgPeer("mw-n-1a2b", "PUB1=", "10.250.0.2:51820", ("10.244.1.0/24",), 25),
                       WgPeer("mw-n-1a2b", "PUB2=", "10.250.0.3:51820", ("10.244.2.0/24",), 25)}
    assert d.routes == {RouteSpec("10.244.1.0/24", "", "mw-n-1a2b"), RouteSpec("10.244.2.0/24", "", "mw-n-1a2b")}
    assert d.guards == (EgressGuard("muslin-wg-n", "10.244.0.0/24", "10.244.0.0/16", "mw-n-1a2b"),)
    lax = wireguard.BACKEND.desired(ClusterConfig("n", backend="wireguard", options={"strict": False}), WME, WPEERS)
    assert lax.guards == () and lax.peers == d.peers
    kernel = wireguard.BACKEND.desired(WCFG, Local(WME.record, "eth0", 1500, {**WG_FACTS, "impl": "kernel"}), [])
    assert not kernel.devices[0].userspace and not kernel.peers


def test_wireguard_peer_without_a_key_or_with_a_duplicate_key_is_a_problem_not_a_peer():
    vx = rec("v", 5)  # a vxlan host's record
    dup = wrec("h3", 3, key="PUB1=")
    d = wireguard.BACKEND.desired(WCFG, WME, WPEERS + [vx, dup])
    assert len(d.peers) == 2 and len(d.problems) == 2
    assert any(p.startswith("peer v: its record has no WireGuard key") for p in d.problems)
    assert any("h3" in p and "already another host's" in p for p in d.problems)


def _observed(d: Desired, **kw) -> Observed:
    return Observed(**{"routes": d.routes, "devices": d.devices, "peers": d.peers, "guards": d.guards, **kw})


def test_wireguard_peer_diff_adds_changes_and_removes_peers_as_deltas():
    d = wireguard.BACKEND.desired(WCFG, WME, WPEERS)
    assert diff(d, _observed(d)).empty
    # a new host: one peer set and one route, nothing else touched
    more = wireguard.BACKEND.desired(WCFG, WME, WPEERS + [wrec("h3", 3)])
    ch = diff(more, _observed(d))
    assert [p.public_key for p in ch.set_peers] == ["PUB3="] and not ch.del_peers
    assert ch.add_routes == (RouteSpec("10.244.3.0/24", "", "mw-n-1a2b"),)
    assert not (ch.create_devices or ch.update_devices or ch.delete_devices or ch.set_guards or ch.del_routes)
    # a host that left: its peer and route go
    ch = diff(wireguard.BACKEND.desired(WCFG, WME, WPEERS[:2]), _observed(d))
    assert [p.public_key for p in ch.del_peers] == ["PUB2="] and not ch.set_peers
    assert ch.del_routes == (RouteSpec("10.244.2.0/24", "", "mw-n-1a2b"),)
    # a host that moved (new endpoint): the same peer set again, never removed
    moved = dataclasses.replace(WPEERS[1], underlay="10.250.0.9",
                                published={"public_key": "PUB1=", "endpoint": "10.250.0.9:51820"})
    ch = diff(wireguard.BACKEND.desired(WCFG, WME, [WPEERS[0], moved, WPEERS[2]]), _observed(d))
    assert [(p.public_key, p.endpoint) for p in ch.set_peers] == [("PUB1=", "10.250.0.9:51820")] and not ch.del_peers
    # a peer's new key (rotation): the old peer removed, the new one set, its route kept
    rotated = wrec("h1", 1, key="NEW1=")
    ch = diff(wireguard.BACKEND.desired(WCFG, WME, [WPEERS[0], rotated, WPEERS[2]]), _observed(d))
    assert [p.public_key for p in ch.del_peers] == ["PUB1="] and [p.public_key for p in ch.set_peers] == ["NEW1="]
    assert not ch.del_routes and not ch.add_routes
    # a peer removed by hand comes back alone
    ch = diff(d, _observed(d, peers=frozenset(p for p in d.peers if p.public_key != "PUB2=")))
    assert ch.summary() == "set peers 1"


def test_wireguard_own_key_change_updates_the_interface_in_place_and_a_gone_interface_is_remade():
    d = wireguard.BACKEND.desired(WCFG, WME, WPEERS)
    (dev,) = d.devices
    ch = diff(d, _observed(d, devices=(dataclasses.replace(dev, public_key="OLD="),)))
    assert ch.update_devices == (dev,) and not ch.create_devices and not ch.set_peers and not ch.del_peers
    # wireguard-go died: its interface, peers and routes are gone; all come back, strict mode stays
    ch = diff(d, Observed(guards=d.guards))
    assert ch.create_devices == (dev,) and set(ch.set_peers) == d.peers and set(ch.add_routes) == d.routes
    assert not ch.set_guards and not ch.delete_guards
    # the kernel module appeared: the interface is made again, and what lived on it
    ch = diff(d, _observed(d, devices=(dataclasses.replace(dev, userspace=False),)))
    assert ch.delete_devices == (dev.name,) and ch.create_devices == (dev,) and set(ch.set_peers) == d.peers


def test_strict_mode_guard_first_and_removed_last_and_teardown_removes_everything():
    d = wireguard.BACKEND.desired(WCFG, WME, WPEERS)
    ch = diff(d, Observed())
    assert ch.set_guards == d.guards
    drift = EgressGuard("muslin-wg-n", "", "", "")
    assert diff(d, _observed(d, guards=(drift,))).set_guards == d.guards
    gone = diff(Desired(), _observed(d))
    assert gone.delete_devices == ("mw-n-1a2b",) and gone.delete_guards == ("muslin-wg-n",)
    assert not gone.del_peers and not gone.del_routes  # they go with the interface
    assert diff(Desired(), Observed()).empty

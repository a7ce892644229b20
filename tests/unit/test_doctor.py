"""`muslin doctor`'s checks are pure functions of the facts: one test per check, each with the
fact that makes it fail and the fix it names (no root, no kernel)."""

from __future__ import annotations

import copy

from muslin.control import doctor as D

NET = {"name": "web", "driver": "bridge", "bridge": "mus-web", "mtu": 1450, "subnets": ["10.1.0.0/24"]}
EP = {"network": "web", "endpoint_id": "c1/eth0", "container_id": "c1", "host_ifname": "mv00000000001",
      "netns": "/run/netns/c1", "owner": "cni/c1/eth0", "peer": ""}
WANT = {"owner": "muslin-owner:/s", "elements": {"bridges": ['"mus-web"'], "own4": ["10.1.0.0/24"]}}


def healthy() -> D.Facts:
    f = D.Facts(state_dir="/s", networks=[dict(NET)], endpoints=[dict(EP)])
    f.links = {"lo": {"mtu": 65536, "up": True, "kind": "", "master": ""},
               "mus-web": {"mtu": 1450, "up": True, "kind": "bridge", "master": ""},
               "mv00000000001": {"mtu": 1450, "up": True, "kind": "veth", "master": "mus-web"}}
    f.firewall_desired = copy.deepcopy(WANT)
    f.firewall_observed = {**copy.deepcopy(WANT), "skeleton_ok": True}
    f.sysctls_desired = {"/proc/sys/net/ipv4/ip_forward": "1"}
    f.sysctls = {"/proc/sys/net/ipv4/ip_forward": "1", D.BRIDGE_NF: "0",
                 "/proc/sys/net/ipv4/conf/all/rp_filter": "0", "/proc/sys/net/ipv4/conf/mus-web/rp_filter": "0"}
    f.ipam_owners = ["cni/c1/eth0", "docker/gw/10.1.0.0_24"]
    f.conntrack = (10, 1000)
    f.probes = {"bridge": True, "veth": True, "vxlan": True, "ipvlan": False, "libnftables": True, "nft": True}
    return f


def by_name(f: D.Facts) -> dict[str, D.Result]:
    return {r.check: r for r in D.run(f)}


def test_a_healthy_host_passes_every_check():
    results = D.run(healthy())
    assert D.healthy(results), [r for r in results if r.status == "fail"]
    assert by_name(healthy())["kernel features"].status == "info"  # ipvlan missing: a fact, not a fault
    assert "ipvlan: missing; fallback:" in by_name(healthy())["kernel features"].details[0]


def fails(f: D.Facts, check: str) -> D.Result:
    r = by_name(f)[check]
    assert r.status == "fail", r
    assert not D.healthy(D.run(f))
    others = [x.check for x in D.run(f) if x.status == "fail" and x.check != check]
    assert not others, others
    assert r.fix, r
    return r


def test_firewall_table_missing_or_different():
    f = healthy()
    f.firewall_observed = None
    r = fails(f, "firewall")
    assert "missing" in r.summary and r.fix == ("muslin --state-dir /s network repair",)
    f = healthy()
    f.firewall_observed["elements"]["own4"] = []
    f.firewall_observed["elements"]["bridges"] = ['"mus-web"', '"mus-old"']
    r = fails(f, "firewall")
    assert "set own4: missing 10.1.0.0/24" in r.details and 'set bridges: unexpected "mus-old"' in r.details
    f = healthy()
    f.firewall_observed["skeleton_ok"] = False
    assert "edited by hand" in fails(f, "firewall").details[0]
    f = healthy()
    f.firewall_observed["owner"] = "muslin-owner:/other"
    assert "owner mark" in fails(f, "firewall").details[0]


def test_forwarding_off():
    f = healthy()
    f.sysctls["/proc/sys/net/ipv4/ip_forward"] = "0"
    r = fails(f, "forwarding")
    assert r.details == ("net.ipv4.ip_forward is 0, needed 1",) and r.fix == ("sysctl -w net.ipv4.ip_forward=1",)


def test_bridge_netfilter_with_docker_drop_and_no_accept_pair():
    f = healthy()
    f.sysctls[D.BRIDGE_NF] = "1"
    f.docker_user = {"bridges": []}
    r = fails(f, "bridge netfilter")
    assert r.details == ("mus-web",)
    f.docker_user = {"bridges": ["mus-web"]}
    assert by_name(f)["bridge netfilter"].status == "ok"


def test_strict_rp_filter_on_a_muslin_link():
    f = healthy()
    f.sysctls["/proc/sys/net/ipv4/conf/mus-web/rp_filter"] = "1"
    r = fails(f, "rp_filter")
    assert r.fix == ("sysctl -w net.ipv4.conf.mus-web.rp_filter=2",)
    f = healthy()
    f.sysctls["/proc/sys/net/ipv4/conf/all/rp_filter"] = "1"  # the larger of all and the link's counts
    assert fails(f, "rp_filter").fix[0] == "sysctl -w net.ipv4.conf.all.rp_filter=2"


def test_mtu_of_a_veth_and_of_the_overlay():
    f = healthy()
    f.links["mv00000000001"]["mtu"] = 1500
    r = fails(f, "mtu")
    assert "veth mv00000000001" in r.details[0] and r.fix == ("ip link set dev mv00000000001 mtu 1450",)
    f = healthy()
    f.cluster = [D.ClusterFacts("net0", "h1", config={"subnet_ttl": 100}, record={"subnet": "10.244.1.0/24"},
                                lease_left=90, alive=["h1"], underlay_dev="eth0", underlay_mtu=1500,
                                overhead=50, desired={"device": {"name": "mx-net0", "mtu": 1450, "kind": "VxlanDev"}},
                                observed={"device": {"name": "mx-net0", "mtu": 1500, "kind": "VxlanDev"}})]
    f.links["mx-net0"] = {"mtu": 1500, "up": True, "kind": "vxlan", "master": ""}
    f.links["eth0"] = {"mtu": 1500, "up": True, "kind": "veth", "master": ""}
    r = fails(f, "mtu")
    assert "overhead (50) on the underlay eth0" in r.details[0] and "mtu 1450" in r.fix[0]


def test_bridge_missing_or_down():
    f = healthy()
    f.links["mus-web"]["up"] = False
    r = by_name(f)["bridges"]
    assert r.status == "fail" and r.fix == ("muslin --state-dir /s network repair web",)
    del f.links["mus-web"]
    assert "is missing" in by_name(f)["bridges"].details[0]


def test_a_bridge_port_removed():
    f = healthy()
    f.links["mv00000000001"]["master"] = ""
    r = fails(f, "bridge ports")
    assert "is not a port of bridge mus-web" in r.details[0]
    assert r.fix[0].startswith("ip link set dev mv00000000001 master mus-web up")
    f = healthy()
    del f.links["mv00000000001"]
    assert "is gone" in fails(f, "bridge ports").details[0]


def test_orphans_veth_netns_and_allocation():
    f = healthy()
    f.links["mv0000000000f"] = {"mtu": 1450, "up": False, "kind": "veth", "master": ""}
    f.ipam_owners.append("cni/dead/eth0")
    f.netns_missing = ["/run/netns/c1"]
    r = by_name(f)["orphans"]
    assert r.status == "fail"
    assert "veth mv0000000000f: Muslin's name, no endpoint" in r.details
    assert any("its netns /run/netns/c1 is gone" in d for d in r.details)
    assert "addresses held by cni/dead/eth0: no endpoint has that owner" in r.details
    assert "ip link delete mv0000000000f" in r.fix
    f = healthy()
    f.ipam_owners.append("reap/mv0000000000e")  # the reaper's, not an orphan
    assert by_name(f)["orphans"].status == "ok"


def test_the_reaper_queue():
    f = healthy()
    f.retired, f.reap_owners = ["mv0000000000e"], ["reap/mv0000000000e"]
    r = fails(f, "DEL reaper")
    assert "1 retired links wait" in r.details[0] and "network repair" in r.fix[1]


def test_store_not_writable():
    f = healthy()
    f.store_write = "OperationalError: attempt to write a readonly database"
    assert "readonly" in fails(f, "store").summary


def test_conntrack_nearly_full():
    f = healthy()
    f.conntrack = (850, 1000)
    r = fails(f, "conntrack")
    assert "85%" in r.summary and r.fix == ("sysctl -w net.netfilter.nf_conntrack_max=2000",)


def test_kernel_features_missing_bridge_fails():
    f = healthy()
    f.probes["bridge"] = False
    assert "bridge" in fails(f, "kernel features").summary


def cluster(**kw) -> D.ClusterFacts:
    c = D.ClusterFacts("net0", "h1", config={"subnet_ttl": 300, "backend": "vxlan"},
                       record={"subnet": "10.244.1.0/24", "underlay": "10.250.0.1"}, lease_left=280,
                       alive=["h1", "h2"], members=[{"endpoint": "10.250.0.254:2379", "ok": True}],
                       peers=[{"hostname": "h2", "subnet": "10.244.2.0/24", "underlay": "10.250.0.2",
                               "vtep_ip": "10.244.2.0", "vtep_mac": "02:00:00:00:00:02"}],
                       underlay_dev="eth0", underlay_mtu=1500, overhead=50)
    objs = {"routes": [["10.244.2.0/24", "10.244.2.0", "mx-net0", True]],
            "fdb": [["mx-net0", "00:00:00:00:00:00", "10.250.0.2"], ["mx-net0", "02:00:00:00:00:02", "10.250.0.2"]],
            "neighs": [["mx-net0", "10.244.2.0", "02:00:00:00:00:02"]],
            "device": {"name": "mx-net0", "mtu": 1450, "kind": "VxlanDev"}}
    c.desired, c.observed = copy.deepcopy(objs), copy.deepcopy(objs)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def with_cluster(c: D.ClusterFacts) -> D.Facts:
    f = healthy()
    f.cluster = [c]
    f.links["mx-net0"] = {"mtu": 1450, "up": True, "kind": "vxlan", "master": ""}
    return f


def test_cluster_healthy():
    f = with_cluster(cluster())
    assert D.healthy(D.run(f)), [r for r in D.run(f) if r.status == "fail"]
    assert by_name(f)["cluster net0: peers"].summary.startswith("1 peers: h2 (routes, fdb, neighs present")


def test_a_peer_route_removed():
    c = cluster()
    c.observed["routes"] = []
    r = fails(with_cluster(c), "cluster net0: peers")
    assert r.details == ("h2: route to 10.244.2.0/24 via 10.244.2.0 dev mx-net0 is missing",)
    assert r.fix[0] == "ip route replace 10.244.2.0/24 via 10.244.2.0 dev mx-net0 onlink proto 77"


def test_a_peer_fdb_entry_and_neighbour_removed():
    c = cluster()
    c.observed["fdb"] = [["mx-net0", "00:00:00:00:00:00", "10.250.0.2"]]
    c.observed["neighs"] = []
    r = fails(with_cluster(c), "cluster net0: peers")
    assert "h2: FDB entry 02:00:00:00:00:02 dst 10.250.0.2 on mx-net0 is missing" in r.details
    assert "bridge fdb append 02:00:00:00:00:02 dev mx-net0 dst 10.250.0.2" in r.fix
    assert "ip neigh replace 10.244.2.0 lladdr 02:00:00:00:00:02 dev mx-net0 nud permanent" in r.fix


def test_leases_not_renewed_and_etcd_member_down():
    r = fails(with_cluster(cluster(alive=["h2"])), "cluster net0: lease")
    assert "no liveness key" in r.details[-1]
    r = fails(with_cluster(cluster(lease_left=20)), "cluster net0: lease")
    assert "20 s of 300 s left" in r.details[1]
    down = [{"endpoint": "a:2379", "ok": True}, {"endpoint": "b:2379", "ok": False, "error": "connection refused"}]
    r = fails(with_cluster(cluster(members=down)), "cluster net0: etcd")
    assert r.details == ("b:2379: connection refused",)


def test_cluster_store_unreadable():
    r = by_name(with_cluster(cluster(error="etcd at 10.250.0.254:2379: connection refused")))["cluster net0: store"]
    assert r.status == "fail" and "connection refused" in r.summary


def test_wireguard_peer_missing_and_stale_handshake():
    c = cluster(config={"subnet_ttl": 300, "backend": "wireguard"}, overhead=80)
    c.peers[0]["published"] = {"public_key": "KEY2", "endpoint": "10.250.0.2:51820"}
    for d in (c.desired, c.observed):
        d.update(fdb=[], neighs=[], routes=[["10.244.2.0/24", "", "mw-net0", False]],
                 peers=[["mw-net0", "KEY2", "10.250.0.2:51820"]], device={"name": "mw-net0", "mtu": 1420, "kind": "WgDev"})
    c.handshakes = {"KEY2": 20.0}
    f = with_cluster(c)
    f.links["mw-net0"] = {"mtu": 1420, "up": True, "kind": "tun", "master": ""}
    assert by_name(f)["cluster net0: peers"].status == "ok", by_name(f)["cluster net0: peers"]
    c.handshakes = {"KEY2": 600.0}
    r = fails(f, "cluster net0: peers")
    assert "h2: WireGuard: last handshake 600 s ago" in r.details[0] and "UDP 10.250.0.2:51820" in r.fix[0]
    c.handshakes = {"KEY2": 1.0}
    c.observed["peers"] = []
    assert "h2: WireGuard peer KEY2... (10.250.0.2:51820) is missing on mw-net0" in \
        fails(f, "cluster net0: peers").details[0]


def test_dns_canary():
    f = healthy()
    assert by_name(f)["dns"].status == "info"  # no DNS for this state dir
    f.dns = {"pid": 1, "port": 53, "alive": True, "answers": {"web 10.1.0.1:53": "rcode 3"}}
    assert by_name(f)["dns"].status == "ok"
    f.dns["answers"]["web 10.1.0.1:53"] = "no answer (timed out)"
    r = fails(f, "dns")
    assert r.details == ("web 10.1.0.1:53: no answer (timed out)",) and "dig @GATEWAY -p 53" in r.fix[0]
    f.dns = {"pid": 99999999, "port": 53, "alive": False, "answers": {}}
    assert "which is gone" in fails(f, "dns").summary

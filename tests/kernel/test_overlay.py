"""dataplane/overlay.py on the real kernel (rtnetlink by hand, kernel-filtered dumps): what it
makes is what it observes, with `ip` and `bridge` as witnesses; a change for one peer touches
that peer only; what is not the agent's (other protocols, other devices) is not seen."""

from __future__ import annotations

import pytest

from nsutil import sh
from muslin.backends.model import ClusterConfig, HostRecord, Local, diff, owned
from muslin.backends.peers import PeerTable
from muslin.backends.registry import get_backend
from muslin.dataplane.nsexec import run_in_netns

pytestmark = pytest.mark.kernel

CFG = ClusterConfig("ov", backend="vxlan")


def peer(i: int) -> HostRecord:
    return HostRecord(f"p{i}", f"10.244.{i}.0/24", f"10.250.{i // 200}.{i % 200 + 2}", "10.250.0.0/16",
                      {"vtep_mac": f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", "vtep_ip": f"10.244.{i}.0"})


ME = HostRecord("me", "10.244.0.0/24", "10.250.0.1", "10.250.0.0/16")


def _underlay():
    from muslin.dataplane.overlay import Overlay
    ov = Overlay()
    try:
        return ov.underlay("", "")
    finally:
        ov.close()


def _step(backend: str, peers: list[HostRecord], extra: tuple[str, ...] = ()):
    """In the namespace: the full reconcile from `peers`; then (observed == desired, the
    second diff's emptiness)."""
    from muslin.dataplane.overlay import Overlay
    b = get_backend(backend)
    cfg = ClusterConfig("ov", backend=backend)
    me = HostRecord("me", ME.subnet, ME.underlay, ME.underlay_net, b.publish(cfg, ME, {}))
    local = Local(me, "eth0", 1500)
    want = PeerTable(b).rebuild(cfg, local, {p.hostname: p for p in peers})
    ov = Overlay()
    try:
        have = owned(ov.observe(b.owned("ov", {})), cfg.network_cidr)
        ov.apply(diff(want, have))
        again = owned(ov.observe(b.owned("ov", {})), cfg.network_cidr)
        return (again.routes == want.routes and again.neighs == want.neighs and again.fdb == want.fdb,
                diff(want, again).empty, len(again.routes), len(again.fdb))
    finally:
        ov.close()


def _one_peer_change(peers: list[HostRecord], changed: HostRecord | None, gone: str):
    """The incremental path: one peer changes (or goes); returns the changes applied."""
    from muslin.dataplane.overlay import Overlay
    b = get_backend("vxlan")
    me = HostRecord("me", ME.subnet, ME.underlay, ME.underlay_net, b.publish(CFG, ME, {}))
    local = Local(me, "eth0", 1500)
    t = PeerTable(b)
    by = {p.hostname: p for p in peers}
    t.rebuild(CFG, local, by)
    if changed is not None:
        by[changed.hostname] = changed
    by.pop(gone, None)
    ch = diff(*t.update(CFG, local, by, {changed.hostname if changed else gone}))
    ov = Overlay()
    try:
        ov.apply(ch)
        after = owned(ov.observe(b.owned("ov", {})), CFG.network_cidr)
        return ch.summary(), diff(t.whole(), after).empty
    finally:
        ov.close()


@pytest.fixture
def host(netns):
    h = netns("ov")
    other = netns("ovp")
    sh("ip", "-n", h.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1", "netns", other.name)
    sh("ip", "-n", h.name, "addr", "add", "10.250.0.1/16", "dev", "eth0")
    sh("ip", "-n", h.name, "link", "set", "eth0", "up")
    return h


def test_vxlan_made_is_observed_and_a_second_pass_changes_nothing(host):
    assert run_in_netns(host.path, _underlay) == ("eth0", "10.250.0.1", "10.250.0.0/16", 1500)
    peers = [peer(i) for i in range(1, 121)]
    same, empty, nroutes, nfdb = run_in_netns(host.path, _step, "vxlan", peers)
    assert same and empty and nroutes == 120 and nfdb == 240
    routes = sh("ip", "-n", host.name, "route", "show", "proto", "77").stdout.splitlines()
    assert len(routes) == 120 and "10.244.7.0/24 via 10.244.7.0 dev mx-ov onlink" in [r.strip() for r in routes]
    fdb = sh("bridge", "-n", host.name, "fdb", "show", "dev", "mx-ov").stdout
    assert "00:00:00:00:00:00 dst 10.250.0.9 self permanent" in fdb and "02:00:00:00:00:07 dst 10.250.0.9 self permanent" in fdb
    neigh = sh("ip", "-n", host.name, "neigh", "show", "dev", "mx-ov").stdout
    assert "10.244.7.0 lladdr 02:00:00:00:00:07 PERMANENT" in neigh
    link = sh("ip", "-n", host.name, "-d", "link", "show", "mx-ov").stdout
    assert "vxlan id 1 local 10.250.0.1 dev eth0" in link and "dstport 4789 nolearning" in link and "mtu 1450" in link
    # no IPv6 on it: its link-local DAD, RS and MLD would be sent to every peer (the zero-MAC entries)
    assert sh("ip", "-n", host.name, "-6", "addr", "show", "dev", "mx-ov").stdout.strip() == ""
    # what is not the agent's is not seen: another protocol's route in the CIDR, a neighbour elsewhere
    sh("ip", "-n", host.name, "route", "add", "10.244.250.0/24", "dev", "eth0")
    sh("ip", "-n", host.name, "neigh", "add", "10.250.9.9", "lladdr", "02:11:11:11:11:11", "dev", "eth0", "nud", "permanent")
    assert run_in_netns(host.path, _step, "vxlan", peers)[:2] == (True, True)
    assert "10.244.250.0/24 dev eth0" in sh("ip", "-n", host.name, "route").stdout
    # fewer peers: theirs go, the rest stay
    assert run_in_netns(host.path, _step, "vxlan", peers[:100])[1:] == (True, 100, 200)


def test_one_peer_changing_or_leaving_touches_that_peer_only(host):
    peers = [peer(i) for i in range(1, 31)]
    run_in_netns(host.path, _step, "vxlan", peers)
    moved = HostRecord("p5", peer(5).subnet, "10.250.3.3", "10.250.0.0/16", dict(peer(5).published))
    summary, consistent = run_in_netns(host.path, _one_peer_change, peers, moved, "")
    assert summary == "del fdb 2, add fdb 2" and consistent
    assert "dst 10.250.3.3 self permanent" in sh("bridge", "-n", host.name, "fdb", "show", "dev", "mx-ov").stdout
    peers[4] = moved
    summary, consistent = run_in_netns(host.path, _one_peer_change, peers, None, "p9")
    assert summary == "del routes 1, del neighs 1, del fdb 2" and consistent
    assert "10.244.9.0/24" not in sh("ip", "-n", host.name, "route").stdout


def test_host_gw_routes(host):
    peers = [HostRecord(f"g{i}", f"10.244.{i}.0/24", f"10.250.0.{i + 1}", "10.250.0.0/16") for i in range(1, 40)]
    same, empty, nroutes, _ = run_in_netns(host.path, _step, "host-gw", peers)
    assert same and empty and nroutes == 39
    assert "10.244.3.0/24 via 10.250.0.4 dev eth0 proto 77" in sh("ip", "-n", host.name, "route").stdout

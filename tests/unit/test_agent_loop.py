"""The agent's loop on in-memory hosts (control/agent_host.py FakeHost: the fake overlay and
kernel) and a MemoryStore: several agents in one process converge; an event for one peer
changes that peer's kernel objects only and reads no kernel; the resync repairs drift from
the local copy without listing the store; a gap lists once; a leave is seen by all."""

from __future__ import annotations

import threading
import time

import pytest

from muslin.backends.model import ClusterConfig
from muslin.backends.peers import PeerTable
from muslin.backends.registry import get_backend
from muslin.control import agent as agent_mod
from muslin.control.agent import Agent, alive_prefix, hosts_prefix, init_config
from muslin.model.errors import NotFound
from muslin.control.agent_host import FakeHost
from muslin.store.memory import MemoryStore


def wait_until(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


class Cluster:
    def __init__(self, tmp_path, backend="vxlan", resync=30.0, relist=600.0):
        self.store = MemoryStore()
        init_config(self.store, ClusterConfig("n", backend=backend, lease_ttl=30), probe=False)
        self.tmp, self.resync, self.relist = tmp_path, resync, relist
        self.agents: dict[str, tuple[Agent, threading.Event, threading.Thread]] = {}

    def add(self, name: str) -> Agent:
        i = len(self.agents) + 1
        host = FakeHost(ip=f"10.250.0.{i}", net="10.250.0.0/24")
        a = Agent(self.store, "n", name, self.tmp / name, resync=self.resync, relist=self.relist,
                  log=lambda m: None, host=host)
        stop = threading.Event()
        t = threading.Thread(target=a.run, args=(stop,), daemon=True)
        t.start()
        self.agents[name] = (a, stop, t)
        return a

    def agent(self, name: str) -> Agent:
        return self.agents[name][0]

    def ov(self, name: str):
        return self.agent(name).host.ov

    def stop(self, name: str, leave: bool = False) -> None:
        a, stop, t = self.agents.pop(name)
        a.leave_on_stop = leave
        stop.set()
        a.wake()
        t.join(10)

    def routed(self, name: str) -> set[str]:
        return set(self.ov(name).routes)

    def subnet(self, name: str) -> str:
        return self.agent(name).local.record.subnet

    def converged(self) -> bool:
        try:
            subs = {h: self.subnet(h) for h in self.agents}
        except AttributeError:
            return False
        return all(self.routed(h) == {s for o, s in subs.items() if o != h} for h in self.agents)

    def close(self) -> None:
        for name in list(self.agents):
            self.stop(name)
        self.store.close()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def test_agents_converge_and_one_event_touches_one_peer_only(cluster):
    for h in ("a", "b", "c"):
        cluster.add(h)
    assert wait_until(cluster.converged)
    a = cluster.agent("a")
    ov = cluster.ov("a")
    assert len(ov.fdb) == 4 and len(ov.neighs) == 2 and len(ov.devices) == 1
    observes, calls = ov.observes, dict(ov.calls)
    cluster.add("d")
    assert wait_until(cluster.converged)
    # a's kernel: d's route, neighbour and two FDB entries added; nothing else done, nothing read
    assert ov.observes == observes
    done = {k: v - calls.get(k, 0) for k, v in ov.calls.items() if v != calls.get(k, 0)}
    assert done == {"add_route": 1, "add_neigh": 1, "add_fdb": 2}, done
    assert a.counts["peer_reconciles"] >= 1 and a.cache.lists == 1
    # d leaves: its objects go from a, and nothing else
    calls = dict(ov.calls)
    sub_d = cluster.subnet("d")
    cluster.stop("d", leave=True)
    assert wait_until(lambda: sub_d not in cluster.routed("a") and sub_d not in cluster.routed("b"))
    done = {k: v - calls.get(k, 0) for k, v in ov.calls.items() if v != calls.get(k, 0)}
    assert done == {"del_route": 1, "del_neigh": 1, "del_fdb": 2}, done
    assert ov.observes == observes and len(ov.fdb) == 4


def test_resync_repairs_drift_from_the_local_copy_without_listing(tmp_path):
    c = Cluster(tmp_path, resync=0.3)
    try:
        for h in ("a", "b"):
            c.add(h)
        assert wait_until(c.converged)
        ov = c.ov("a")
        sub_b = c.subnet("b")
        del ov.routes[sub_b]  # by hand
        ov.fdb.clear()
        assert wait_until(lambda: sub_b in ov.routes and len(ov.fdb) == 2, 5)
        assert c.agent("a").cache.lists == 1  # repaired from what the watch brought, not a list
    finally:
        c.close()


def test_resync_period_grows_with_the_peers_and_still_repairs_drift(tmp_path, monkeypatch):
    """Beyond SCALE_HOSTS peers the resync comes less often (its full diff costs per peer:
    bounded CPU per second); it still repairs drift, from the local copy."""
    monkeypatch.setattr(agent_mod, "SCALE_HOSTS", 1)  # so that 3 hosts are "many"
    c = Cluster(tmp_path, resync=0.2)
    try:
        for h in ("a", "b", "c"):
            c.add(h)
        assert wait_until(c.converged)
        a = c.agent("a")
        assert a._resync_after() == pytest.approx(0.6)
        full = a.counts["full_reconciles"]
        ov = c.ov("a")
        sub_b = c.subnet("b")
        del ov.routes[sub_b]  # by hand
        ov.fdb.clear()
        assert wait_until(lambda: sub_b in ov.routes and len(ov.fdb) == 4, 10)
        assert a.counts["full_reconciles"] > full and a.cache.lists == 1
    finally:
        c.close()


def test_a_gap_lists_once_and_the_agents_catch_up(tmp_path):
    c = Cluster(tmp_path)
    try:
        for h in ("a", "b"):
            c.add(h)
        assert wait_until(c.converged)
        a = c.agent("a")
        w = a.cache._watch
        w.close()  # as if the stream were cut off while history goes on and is compacted
        resume = a.cache.revision + 1
        c.add("c")
        assert wait_until(lambda: "c" in c.agent("b").peers)
        c.store.compact(c.store.revision())
        a.cache._watch = c.store.open_watch(hosts_prefix("n"), resume)
        assert wait_until(c.converged)
        assert a.cache.gaps == 1 and a.cache.lists == 2
    finally:
        c.close()


def test_a_malformed_record_is_skipped_and_the_rest_works(cluster):
    cluster.add("a")
    cluster.store.put(hosts_prefix("n") + "bad", {"hostname": "bad"})  # no subnet
    cluster.add("b")
    assert wait_until(cluster.converged)
    assert "bad" not in cluster.agent("a").peers


def test_peer_table_shared_objects_go_with_the_last_peer():
    from muslin.backends.model import HostRecord, Local, diff
    cfg = ClusterConfig("n", backend="host-gw")
    me = Local(HostRecord("me", "10.244.0.0/24", "10.250.0.1", "10.250.0.0/24"), "eth0")
    t = PeerTable(get_backend("host-gw"))
    peers = {"x": HostRecord("x", "10.244.1.0/24", "10.250.0.2", "10.250.0.0/24"),
             "y": HostRecord("y", "10.244.2.0/24", "10.250.0.3", "10.250.0.0/24")}
    whole = t.rebuild(cfg, me, peers)
    assert {r.dst for r in whole.routes} == {"10.244.1.0/24", "10.244.2.0/24"}
    moved = dict(peers, y=HostRecord("y", "10.244.2.0/24", "10.250.0.9", "10.250.0.0/24"))
    want, had = t.update(cfg, me, moved, {"y"})
    ch = diff(want, had)
    assert [r.gateway for r in ch.del_routes] == ["10.250.0.3"] and [r.gateway for r in ch.add_routes] == ["10.250.0.9"]
    del moved["x"]
    ch = diff(*t.update(cfg, me, moved, {"x"}))
    assert [r.dst for r in ch.del_routes] == ["10.244.1.0/24"] and not ch.add_routes
    assert t.whole().routes == t.rebuild(cfg, me, moved).routes


def test_peer_table_rebuild_computes_again_only_what_changed():
    """A resync's rebuild reuses a peer's objects while its record, the config and the host
    are those they were computed from; the result is the same as computed afresh."""
    from muslin.backends.model import HostRecord, Local
    from muslin.backends.model import owned
    from muslin.backends.peers import as_observed
    cfg = ClusterConfig("n", backend="host-gw")
    me = Local(HostRecord("me", "10.244.0.0/24", "10.250.0.1", "10.250.0.0/24"), "eth0")
    backend = get_backend("host-gw")
    calls = []

    class Counting:
        per_peer, companions = backend.per_peer, backend.companions

        def desired(self, *a):
            return backend.desired(*a)

        def peer_desired(self, c, loc, p):
            calls.append(p.hostname)
            return backend.peer_desired(c, loc, p)

    t = PeerTable(Counting())
    peers = {h: HostRecord(h, f"10.244.{i}.0/24", f"10.250.0.{i + 1}", "10.250.0.0/24")
             for i, h in enumerate(["x", "y", "z"], 1)}
    t.rebuild(cfg, me, peers)
    assert sorted(calls) == ["x", "y", "z"]
    calls.clear()
    moved = dict(peers, y=HostRecord("y", "10.244.2.0/24", "10.250.0.9", "10.250.0.0/24"))
    again = t.rebuild(cfg, me, moved)
    assert calls == ["y"]
    assert again == PeerTable(backend).rebuild(cfg, me, moved)
    assert {r.gateway for r in again.routes if r.dst == "10.244.2.0/24"} == {"10.250.0.9"}
    calls.clear()
    other = Local(HostRecord("me", "10.244.0.0/24", "10.250.0.5", "10.250.0.0/24"), "eth0")
    t.rebuild(cfg, other, moved)  # the host itself changed: every peer again
    assert sorted(calls) == ["x", "y", "z"]
    cidr = cfg.network_cidr  # owned() keeps only this network's routes (remembered per destination)
    assert owned(as_observed(again), cidr).routes == again.routes


def test_a_liveness_lease_lost_twice_is_published_again_later_and_the_agent_goes_on(cluster):
    """An overloaded host: its liveness lease expired, and the fresh one too before the put
    (etcd: "requested lease not found"). The agent logs it and publishes at the next renewal;
    its loop does not die (seen in the simulated cluster at 5,000 hosts)."""
    a = cluster.add("a")
    cluster.add("b")
    assert wait_until(cluster.converged)
    store, put = cluster.store, cluster.store.put
    failed = []

    def put_once_without_lease(key, value, **kw):
        if "/alive/" in key and not failed:
            failed.append(key)
            raise NotFound("etcd lease not found: etcdserver: requested lease not found")
        return put(key, value, **kw)

    store.put = put_once_without_lease
    store.revoke_lease(a.alive_lease)
    a.renew_alive()  # lease gone, the fresh one "gone" too: logged, not raised
    assert failed and store.get(alive_prefix("n") + "a") is None
    a.renew_alive()  # the next renewal publishes it
    assert store.get(alive_prefix("n") + "a") is not None
    thread = cluster.agents["a"][2]
    assert thread.is_alive()

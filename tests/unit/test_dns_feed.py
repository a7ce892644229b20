"""The stores -> the name table (control/dns_feed.py) and a host's endpoints -> the cluster
store (control/cluster_names.py), on memory stores. No root."""

from __future__ import annotations

import ipaddress
import threading
import time
from concurrent.futures import Future

from muslin.control.cluster_names import EndpointPublisher
from muslin.control.dns_feed import ClusterFeed, LocalFeed
from muslin.dns.records import NameTable
from muslin.model import keys
from muslin.model.types import Endpoint, IPRange, Network
from muslin.store.memory import MemoryStore

NET = Network("web", range_sets=((IPRange(ipaddress.ip_network("10.5.0.0/24")),),))


def ep(eid: str, ip: str, name: str = "", aliases=()) -> Endpoint:
    return Endpoint("web", eid, eid, "eth0", f"/run/netns/{eid}", "", "", (ipaddress.ip_interface(ip + "/24"),),
                    name=name, aliases=tuple(aliases))


class Loop:
    """apply(fn) runs fn(table) at once (the server's loop, without the server)."""

    def __init__(self) -> None:
        self.table = NameTable()
        self.lock = threading.Lock()

    def __call__(self, fn):
        with self.lock:
            fn(self.table)
        f: Future = Future()
        f.set_result(None)
        return f

    def resolve(self, name: str) -> list[str]:
        with self.lock:
            return [str(a) for a in self.table.resolve(name, 4, ["web"]).addresses]


def until(fn, timeout: float = 5.0):
    end = time.monotonic() + timeout
    while not fn() and time.monotonic() < end:
        time.sleep(0.01)
    return fn()


def test_local_feed_loads_then_follows_the_store():
    st = MemoryStore()
    st.put(keys.network("web"), NET.to_dict())
    st.put(keys.endpoint("web", "a"), ep("a", "10.5.0.2", "alpha").to_dict())
    loop, stop = Loop(), threading.Event()
    f = LocalFeed(st, loop, stop)
    f.start()
    try:
        assert f.loaded.wait(5) and loop.resolve("alpha") == ["10.5.0.2"]
        assert [str(a) for a in loop.table.listen()] == ["10.5.0.1"]
        st.put(keys.endpoint("web", "b"), ep("b", "10.5.0.3", "beta", ["shared"]).to_dict())
        assert until(lambda: loop.resolve("beta") == ["10.5.0.3"])
        st.put(keys.endpoint("web", "a"), ep("a", "10.5.0.2", "alpha", ["shared"]).to_dict())
        assert until(lambda: sorted(loop.resolve("shared")) == ["10.5.0.2", "10.5.0.3"])
        st.delete(keys.endpoint("web", "b"))
        assert until(lambda: loop.resolve("beta") == [] and loop.resolve("shared") == ["10.5.0.2"])
        st.delete(keys.network("web"))
        assert until(lambda: loop.table.listen() == {})
    finally:
        stop.set()
        f.join()


def test_publisher_writes_under_the_lease_deletes_on_detach_and_rewrites_on_a_new_lease():
    local, cluster = MemoryStore(), MemoryStore()
    lease = [cluster.grant_lease(60)]
    pub = EndpointPublisher(cluster, local, "web", "h1", lambda: lease[0])
    local.put(keys.endpoint("web", "a"), ep("a", "10.5.0.2", "alpha", ["x"]).to_dict())
    assert pub.sync()
    (kv,) = cluster.list(keys.cluster_endpoints("web", "h1"))
    assert kv.lease == lease[0] and kv.value["name"] == "alpha" and kv.value["aliases"] == ["x"]
    assert kv.value["addresses"] == ["10.5.0.2/24"] and kv.value["namespace"] == "default"
    assert not pub.sync()  # nothing changed: nothing written
    local.delete(keys.endpoint("web", "a"))
    assert pub.sync() and cluster.list(keys.cluster_endpoints("web")) == []
    local.put(keys.endpoint("web", "b"), ep("b", "10.5.0.3", "beta").to_dict())
    pub.sync()
    cluster.revoke_lease(lease[0])  # the lease went (a leave, an expiry): its keys with it
    assert cluster.list(keys.cluster_endpoints("web")) == []
    lease[0] = cluster.grant_lease(60)
    assert pub.sync()
    (kv,) = cluster.list(keys.cluster_endpoints("web", "h1"))
    assert kv.lease == lease[0] and kv.value["name"] == "beta"


def test_cluster_feed_takes_other_hosts_records_not_its_own():
    cluster = MemoryStore()
    rec = {"endpoint_id": "r", "sandbox": "/run/netns/r", "name": "far", "aliases": [], "addresses": ["10.6.0.2/24"]}
    cluster.put(keys.cluster_endpoint("web", "h2", "r"), rec)
    cluster.put(keys.cluster_endpoint("web", "h1", "mine"), {**rec, "name": "mine"})
    loop, stop = Loop(), threading.Event()
    f = ClusterFeed(cluster, loop, stop, "web", "h1")
    f.start()
    try:
        assert f.loaded.wait(5) and loop.resolve("far") == ["10.6.0.2"] and loop.resolve("mine") == []
        cluster.delete(keys.cluster_endpoint("web", "h2", "r"))
        assert until(lambda: loop.resolve("far") == [])
    finally:
        stop.set()
        f.join()

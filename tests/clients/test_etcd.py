"""EtcdStore against a real etcd 3.4: watch resume across a restart, leases, errors."""

from __future__ import annotations

import threading
import time

import pytest

from etcdutil import EtcdServer
from muslin.model.errors import Conflict, NotFound, Unavailable
from muslin.store.base import Compare, Delete, Put
from muslin.store.etcd import EtcdStore

pytestmark = pytest.mark.client


@pytest.fixture
def etcd():
    srv = EtcdServer().start()
    try:
        yield srv
    finally:
        srv.destroy()


def test_cas_txn_and_prefix(etcd):
    s = EtcdStore([etcd.endpoint])
    r = s.put("a/1", {"x": 1}, expect=0)
    with pytest.raises(Conflict):
        s.put("a/1", {"x": 2}, expect=0)
    s.put("a/1", {"x": 2}, expect=r)
    s.put("a/2", [1, 2])
    s.put("b", "other")
    assert [kv.key for kv in s.list("a/")] == ["a/1", "a/2"]
    with pytest.raises(Conflict):
        s.txn([Compare("a/3", 5)], [Put("a/3", 1)])
    assert s.get("a/3") is None
    s.txn([Compare("a/3", 0)], [Put("a/3", 1), Delete("a/", prefix=False), Delete("a/1")])
    assert [kv.key for kv in s.list("a/")] == ["a/2", "a/3"]
    assert s.delete_prefix("a/") == 2
    assert s.get("b").value == "other"


def test_lease_expiry_produces_delete_event(etcd):
    s = EtcdStore([etcd.endpoint])
    start = s.revision() + 1
    lease = s.grant_lease(1)
    s.put("h/x", {"subnet": "10.0.0.0/24"}, lease=lease)
    s.refresh_lease(lease)
    events = []
    for ev in s.watch("h/", start, timeout=4):
        events.append(ev)
        if ev.type == "delete":
            break
    assert [(e.type, e.key) for e in events] == [("put", "h/x"), ("delete", "h/x")]
    with pytest.raises(NotFound):
        s.refresh_lease(lease)


def test_watch_resumes_across_etcd_restart(etcd):
    s = EtcdStore([etcd.endpoint])
    start = s.revision() + 1
    got: list = []

    def consume():
        for ev in s.watch("w/", start, timeout=20):
            got.append(ev.key)
            if len(got) == 3:
                return

    t = threading.Thread(target=consume)
    t.start()
    s.put("w/1", 1)
    time.sleep(0.5)
    etcd.stop()
    with pytest.raises(Unavailable, match="unreachable"):
        s.put("w/x", 0)
    etcd.start()
    s.put("w/2", 2)
    s.put("w/3", 3)
    t.join(25)
    assert got == ["w/1", "w/2", "w/3"]


def test_unreachable_is_one_clear_line():
    s = EtcdStore(["127.0.0.1:1"])
    with pytest.raises(Unavailable) as e:
        s.get("x")
    assert str(e.value) == "etcd at 127.0.0.1:1 is unreachable: connection refused"


def test_watch_from_compacted_revision_is_unavailable(etcd):
    import json
    import urllib.request
    s = EtcdStore([etcd.endpoint])
    start = s.revision() + 1
    for i in range(5):
        s.put("c/k", i)
    req = urllib.request.Request(f"http://{etcd.endpoint}/v3/kv/compaction",
                                 data=json.dumps({"revision": str(s.revision())}).encode(), method="POST")
    urllib.request.urlopen(req, timeout=5).read()
    with pytest.raises(Unavailable, match="compacted"):
        list(s.watch("c/", start, timeout=2))
    assert [e.value for e in s.watch("c/", s.revision(), timeout=0.3)] == [4]

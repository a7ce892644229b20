"""control/policy_feed.py and control/service_members.py (no root): what a cluster host's
muslind copies from the cluster store into its store (policies and namespaces under
`mirror/`; the other hosts' endpoints, never its own, under `remote-endpoints/`, the one copy
services and policy share), stale copies dropped on a reload (and the second copy an
earlier Muslin kept under `mirror/cluster/`), deletes followed, and the compiler's input
then holding the remote endpoints and the cluster's policies."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faultkit import World  # noqa: E402

from muslin.control import policy  # noqa: E402
from muslin.control.policy_feed import ObjectsFeed  # noqa: E402
from muslin.control.service_members import RemoteMembers  # noqa: E402
from muslin.model import keys  # noqa: E402
from muslin.store.base import Event  # noqa: E402
from muslin.store.memory import MemoryStore  # noqa: E402

DOC = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
       "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}}


def record(eid: str, ip: str, **labels: str) -> dict:
    return {"endpoint_id": eid, "sandbox": eid, "name": eid, "aliases": [], "labels": labels, "namespace": "x",
            "addresses": [f"{ip}/24"], "exposed": [{"name": "web", "port": 8080, "protocol": "tcp"}]}


def test_feeds_mirror_the_cluster_and_follow_deletes(tmp_path):
    w = World(tmp_path / "state")
    cluster = MemoryStore()
    policy.apply(w.m, [DOC], cluster, "default", "t")
    policy.label_namespace(w.m, "x", {"team": "blue"}, [], cluster)
    cluster.put(keys.cluster_endpoint("net0", "h2", "b"), record("b", "10.9.2.5", pod="b"))
    cluster.put(keys.cluster_endpoint("net0", "h1", "mine"), record("mine", "10.9.1.5", pod="a"))
    stop = threading.Event()
    objects, peers = ObjectsFeed(cluster, w.m, stop), RemoteMembers(cluster, w.m, "net0", "h1", stop)
    w.m.store.put(keys.mirror(keys.policy("x", "stale")), DOC)  # left from an earlier run
    old_copy = keys.mirror(keys.cluster_endpoint("net0", "h2", "b"))
    w.m.store.put(old_copy, record("b", "10.9.2.5", pod="b"))  # an earlier Muslin's second copy
    objects.load()
    peers.load()

    assert [p.key for p in policy.load_policies(w.m.store)] == ["x/p"]
    assert policy.load_namespaces(w.m.store)["x"].label_map["team"] == "blue"
    remote = policy.remote_endpoints(w.m.store)
    assert [(e.name, e.local, [str(a) for a in e.addresses], e.ports) for e in remote] == \
        [("b", False, ["10.9.2.5"], (("web", 8080, "tcp"),))]  # h1's own endpoint is not copied
    inp = policy.current_input(w.m)
    assert inp.policies and any(e.name == "b" for e in inp.endpoints)

    key = keys.cluster_endpoint("net0", "h2", "b")
    assert w.m.store.get(old_copy) is None
    assert [kv.key for kv in w.m.store.list(keys.REMOTE_ENDPOINTS)] == [keys.remote_endpoint("net0", "h2", "b")]
    peers.apply(key, None)
    objects.apply_events([Event("delete", keys.policy("x", "p"), None, cluster.revision())])
    assert policy.remote_endpoints(w.m.store) == []
    assert policy.load_policies(w.m.store) == []

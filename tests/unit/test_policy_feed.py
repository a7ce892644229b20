"""control/policy_feed.py (no root): what a cluster host's muslind copies from the cluster
store (policies, namespaces, the other hosts' endpoints; never its own) into its store's
`mirror/`, stale copies dropped on a reload, deletes followed, and the compiler's input then
holding the remote endpoints and the cluster's policies."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faultkit import World  # noqa: E402

from muslin.control import policy  # noqa: E402
from muslin.control.policy_feed import ObjectsFeed, PeersFeed  # noqa: E402
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
    objects, peers = ObjectsFeed(cluster, w.m, stop), PeersFeed(cluster, w.m, stop, "net0", "h1")
    w.m.store.put(keys.mirror(keys.policy("x", "stale")), DOC)  # left from an earlier run
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
    peers.apply_events([Event("delete", key, None, cluster.revision())])
    objects.apply_events([Event("delete", keys.policy("x", "p"), None, cluster.revision())])
    assert policy.remote_endpoints(w.m.store) == []
    assert policy.load_policies(w.m.store) == []

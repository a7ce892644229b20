"""control/cluster.py on the memory store: every host of every cluster network with its
health (liveness key), subnet lease and time left, peers; this host's agent's own view."""

from __future__ import annotations

import json

from muslin.backends.model import ClusterConfig, HostRecord
from muslin.control import cluster
from muslin.control.agent import alive_prefix, hosts_prefix, init_config
from muslin.store.memory import MemoryStore


def host(st, net, name, subnet, alive=True):
    lease = st.grant_lease(100)
    st.put(hosts_prefix(net) + name, HostRecord(name, subnet, f"192.0.2.{subnet.split('.')[2]}").to_dict(),
           lease=lease)
    if alive:
        st.put(alive_prefix(net) + name, {"pid": 42, "since": 1.0}, lease=st.grant_lease(10))
    return lease


def test_status_health_leases_peers_and_the_local_view(tmp_path):
    st = MemoryStore()
    init_config(st, ClusterConfig("a", "10.244.0.0/16", 24, "vxlan"))
    init_config(st, ClusterConfig("b", "10.245.0.0/16", 24, "host-gw"))
    host(st, "a", "h1", "10.244.1.0/24")
    host(st, "a", "h2", "10.244.2.0/24", alive=False)
    st.put(alive_prefix("a") + "h3", {"pid": 7}, lease=st.grant_lease(10))  # joining: alive, no record yet
    host(st, "b", "h1", "10.245.1.0/24")
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "a.status.json").write_text(json.dumps(
        {"hostname": "h1", "peers": {}, "problems": ["reconcile failed: x"], "store_ok": True}))

    assert cluster.network_names(st) == ["a", "b"]
    s = cluster.status(st, "", tmp_path)
    a = s["networks"]["a"]["hosts"]
    assert sorted(a) == ["h1", "h2", "h3"]
    assert a["h1"]["peers"] == ["h2"] and 90 <= a["h1"]["lease_left"] <= 100 and a["h1"]["alive"]
    assert a["h1"]["reasons"] == ["its agent routes to no host, the store has h2", "reconcile failed: x"]
    assert not a["h2"]["alive"] and a["h2"]["reasons"][0].startswith("no liveness key")
    assert a["h3"]["reasons"] == ["no subnet lease (it is leaving, or has not joined yet)"]
    assert s["networks"]["b"]["healthy"] and not s["healthy"]
    line = cluster.degraded(s)
    assert line.startswith("cluster network a is degraded: h1 (its agent routes to no host") and "\n" not in line
    assert cluster.status(st, "b")["healthy"] and cluster.degraded(cluster.status(st, "b")) == ""

"""The agent's subnet leasing on a MemoryStore (no kernel): stable subnets, Exhausted."""

from __future__ import annotations

import pytest

from muslin.backends.model import ClusterConfig
from muslin.control.agent import Agent, hosts_prefix, init_config, list_hosts
from muslin.model.errors import Conflict, Exhausted
from muslin.store.memory import MemoryStore


def agent(store, host, tmp_path, cidr="10.244.0.0/16"):
    a = Agent(store, "n", host, tmp_path / host, log=lambda m: None)
    a.cfg = ClusterConfig("n", cidr=cidr, lease_ttl=30)
    a.underlay_dev = "eth0"
    return a


def test_hosts_get_distinct_subnets_and_keep_them(tmp_path):
    s = MemoryStore()
    init_config(s, ClusterConfig("n"))
    a, b = agent(s, "a", tmp_path), agent(s, "b", tmp_path)
    a.register("10.0.0.1", "10.0.0.0/24", 1500)
    b.register("10.0.0.2", "10.0.0.0/24", 1500)
    assert a.local.record.subnet != b.local.record.subnet
    hosts = list_hosts(s, "n")
    assert hosts["a"][1] == a.lease and hosts["b"][0].subnet == b.local.record.subnet
    # a restart of a (new Agent, same state dir) reuses the lease and the subnet
    a2 = agent(s, "a", tmp_path)
    a2.register("10.0.0.1", "10.0.0.0/24", 1500)
    assert a2.local.record.subnet == a.local.record.subnet and a2.lease == a.lease


def test_same_subnet_after_lease_expiry(tmp_path):
    s = MemoryStore()
    a = agent(s, "a", tmp_path)
    agent(s, "x", tmp_path).register("10.0.0.9", "10.0.0.0/24", 1500)  # takes the first subnet
    a.register("10.0.0.1", "10.0.0.0/24", 1500)
    mine = a.local.record.subnet
    s.revoke_lease(a.lease)  # as if it expired
    assert "a" not in list_hosts(s, "n")
    a2 = agent(s, "a", tmp_path)
    a2.register("10.0.0.1", "10.0.0.0/24", 1500)
    assert a2.local.record.subnet == mine


def test_cidr_too_small_is_exhausted(tmp_path):
    s = MemoryStore()
    agent(s, "a", tmp_path, cidr="10.244.0.0/24").register("10.0.0.1", "10.0.0.0/24", 1500)
    with pytest.raises(Exhausted, match="no free /24 left in 10.244.0.0/24 for host b"):
        agent(s, "b", tmp_path, cidr="10.244.0.0/24").register("10.0.0.2", "10.0.0.0/24", 1500)
    assert sorted(list_hosts(s, "n")) == ["a"]
    assert [kv.key for kv in s.list("cluster/n/subnets/")] == ["cluster/n/subnets/10.244.0.0_24"]


def test_init_config_conflict():
    s = MemoryStore()
    init_config(s, ClusterConfig("n"))
    init_config(s, ClusterConfig("n"))  # same: fine
    with pytest.raises(Conflict, match="another config"):
        init_config(s, ClusterConfig("n", backend="host-gw"))
    assert s.get(hosts_prefix("n")) is None

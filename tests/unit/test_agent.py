"""The agent's subnet leasing on a MemoryStore (no kernel): stable subnets, Exhausted, and
the subnet lease (long, holds the record peers route by) kept apart from liveness (short,
health only)."""

from __future__ import annotations

import pytest

import json

from muslin.backends.model import DEFAULT_SUBNET_TTL, ClusterConfig
from muslin.control import agent as agent_mod
from muslin.control.agent import (Agent, alive_prefix, config_key, hosts_prefix, init_config, list_alive,
                                  list_hosts, read_config, subnet_key)
from muslin.model.errors import Conflict, Exhausted, Invalid
from muslin.store.base import Put
from muslin.store.memory import MemoryStore


def agent(store, host, tmp_path, cidr="10.244.0.0/16", subnet_ttl=DEFAULT_SUBNET_TTL):
    a = Agent(store, "n", host, tmp_path / host, log=lambda m: None)
    a.cfg = ClusterConfig("n", cidr=cidr, lease_ttl=30, subnet_ttl=subnet_ttl)
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


def ttl_of(store: MemoryStore, lease: int) -> float:
    return store._leases[lease][0]


def joined(store, host, tmp_path, **kw):
    a = agent(store, host, tmp_path, **kw)
    a.register(f"10.0.0.{ord(host[0]) - 96}", "10.0.0.0/24", 1500)
    a.publish_alive()
    return a


def test_record_and_subnet_under_the_long_lease_liveness_under_the_short_one(tmp_path):
    s = MemoryStore()
    a = joined(s, "a", tmp_path)
    rec = s.get(hosts_prefix("n") + "a")
    sub = s.get(subnet_key("n", a.local.record.subnet))
    alive = s.get(alive_prefix("n") + "a")
    assert rec.lease == sub.lease == a.lease and alive.lease == a.alive_lease != a.lease
    assert ttl_of(s, a.lease) == DEFAULT_SUBNET_TTL == 86400 and ttl_of(s, a.alive_lease) == 30
    assert sorted(list_alive(s, "n")) == ["a"] and set(alive.value) == {"pid", "since"}
    mem = json.loads(a.memory_path.read_text())
    assert mem == {"subnet": a.local.record.subnet, "lease": a.lease, "subnet_ttl": 86400,
                   "alive_lease": a.alive_lease}


def test_liveness_expiry_takes_nothing_peers_route_by(tmp_path):
    s = MemoryStore()
    a = joined(s, "a", tmp_path)
    rev = s.revision()
    s.revoke_lease(a.alive_lease)  # the agent died: its liveness lease expires
    assert list_alive(s, "n") == {} and list_hosts(s, "n")["a"][0] == a.local.record
    assert s.get(subnet_key("n", a.local.record.subnet)) is not None
    assert list(s.watch(hosts_prefix("n"), rev + 1, timeout=0.1)) == []  # peers' watch sees nothing
    a.renew_alive()  # a running agent whose liveness lease expired publishes it again
    assert sorted(list_alive(s, "n")) == ["a"]


def test_restarted_agent_finds_its_lease_and_record_and_writes_nothing(tmp_path):
    s = MemoryStore()
    a = joined(s, "a", tmp_path)
    agent(s, "b", tmp_path).register("10.0.0.2", "10.0.0.0/24", 1500)
    rev = s.revision()
    a2 = agent(s, "a", tmp_path)  # same state dir: a restart after kill -9
    a2.register("10.0.0.1", "10.0.0.0/24", 1500)
    assert a2.lease == a.lease and a2.local == a.local
    assert s.revision() == rev  # not one write: peers see no event
    old_alive = a.alive_lease
    a2.publish_alive()
    assert a2.alive_lease != old_alive and old_alive not in s._leases  # the dead run's lease is revoked
    assert list(s.watch(hosts_prefix("n"), rev + 1, timeout=0.1)) == []


def test_record_of_an_older_agent_moves_to_a_subnet_lease_without_a_delete(tmp_path):
    s = MemoryStore()
    a = joined(s, "a", tmp_path)
    rec = a.local.record
    # as an agent before the subnet lease left it: both keys under one short lease,
    # remembered without a subnet_ttl
    old = s.grant_lease(10)
    s.txn([], [Put(hosts_prefix("n") + "a", rec.to_dict(), lease=old),
               Put(subnet_key("n", rec.subnet), {"hostname": "a"}, lease=old)])
    s.revoke_lease(a.lease)
    a.memory_path.write_text(json.dumps({"subnet": rec.subnet, "lease": old}))
    rev = s.revision()
    a2 = agent(s, "a", tmp_path)
    a2.register("10.0.0.1", "10.0.0.0/24", 1500)
    assert a2.local.record == rec and a2.lease != old and ttl_of(s, a2.lease) == 86400
    assert old not in s._leases
    assert s.get(hosts_prefix("n") + "a").lease == s.get(subnet_key("n", rec.subnet)).lease == a2.lease
    events = list(s.watch("cluster/n/", rev + 1, timeout=0.1))
    assert events and all(e.type == "put" for e in events)  # the same record, never absent


def test_expired_subnet_lease_removes_the_host_and_renewal_leases_the_same_subnet(tmp_path):
    s = MemoryStore()
    a = joined(s, "a", tmp_path, subnet_ttl=60)
    mine = a.local.record.subnet
    assert a.renew_subnet() is False
    s.revoke_lease(a.lease)  # as if it expired: peers drop the host
    assert "a" not in list_hosts(s, "n") and s.get(subnet_key("n", mine)) is None
    assert a.renew_subnet() is True
    assert list_hosts(s, "n")["a"][0].subnet == mine and ttl_of(s, a.lease) == 60


def test_leave_removes_record_subnet_and_liveness(tmp_path, monkeypatch):
    torn = []
    monkeypatch.setattr(agent_mod, "teardown_local", lambda *a: torn.append(a))
    s = MemoryStore()
    a = joined(s, "a", tmp_path)
    b = joined(s, "b", tmp_path)
    leases = (a.lease, a.alive_lease)
    a.leave()
    assert sorted(list_hosts(s, "n")) == ["b"] and sorted(list_alive(s, "n")) == ["b"]
    assert [kv.key for kv in s.list("cluster/n/subnets/")] == [subnet_key("n", b.local.record.subnet)]
    assert not set(leases) & set(s._leases) and len(torn) == 1
    # `agent leave` without a running agent: from the remembered leases only
    b2 = Agent(s, "n", "b", tmp_path / "b", log=lambda m: None)
    b2.leave()
    assert list_hosts(s, "n") == {} and list_alive(s, "n") == {} and s.list("cluster/n/subnets/") == []


def test_config_subnet_ttl_default_for_old_configs_and_validation():
    s = MemoryStore()
    old = {k: v for k, v in ClusterConfig("n", lease_ttl=10).to_dict().items() if k not in ("subnet_ttl", "network")}
    s.put(config_key("n"), old)  # stored by an agent before the subnet lease
    cfg = read_config(s, "n")
    assert cfg.subnet_ttl == DEFAULT_SUBNET_TTL and cfg.lease_ttl == 10
    assert init_config(s, ClusterConfig("n", lease_ttl=10)) == cfg  # same settings: not a conflict
    with pytest.raises(Invalid, match="subnet lease TTL 5 must be at least the liveness lease TTL 10"):
        ClusterConfig("n", lease_ttl=10, subnet_ttl=5).validate()


def test_liveness_renewals_keep_a_margin_and_are_rarer_for_long_ttls():
    """Renewed every half TTL, but at least ALIVE_MARGIN s (and a third) before it expires:
    the default 90 s TTL is renewed every 45 s (a dead agent shows 45-90 s later); short
    TTLs (the lab's 10 s, the tests' 3 s) keep their third."""
    assert ClusterConfig("n").lease_ttl == 90
    assert agent_mod.alive_every(90) == 45 and agent_mod.alive_every(60) == 30 and agent_mod.alive_every(30) == 15
    assert agent_mod.alive_every(10) == pytest.approx(10 / 3) and agent_mod.alive_every(3) == 1
    for ttl in (3, 10, 20, 30, 45, 60, 90, 3600):
        every = agent_mod.alive_every(ttl)
        assert ttl / 3 <= every <= ttl / 2
        assert ttl - every >= min(agent_mod.ALIVE_MARGIN, 2 * ttl / 3) - 1e-9


def test_check_lists_and_resyncs_grow_with_the_hosts_beyond_scale_hosts(tmp_path):
    """Up to SCALE_HOSTS hosts the periods are as asked; beyond, they grow with N, so the
    cluster's check lists send bytes linear in N and a resync's CPU per second is bounded."""
    n = agent_mod.SCALE_HOSTS
    assert agent_mod.relist_period(600, 3) == agent_mod.relist_period(600, n) == 600
    assert agent_mod.relist_period(600, 10 * n) == 6000
    assert agent_mod.resync_period(10, n) == 10 and agent_mod.resync_period(10, 50 * n) == 500
    a = agent(MemoryStore(), "a", tmp_path)
    a.relist = 600
    assert all(300 <= a._relist_after() <= 900 for _ in range(50))
    a.peers = {f"h{i}": None for i in range(10 * n)}
    assert all(3000 <= a._relist_after() <= 9000 for _ in range(50))
    assert all(6000 * 0.05 <= a._relist_after(first=True) <= 9000 for _ in range(50))

"""The agent treats every backend alike (no kernel, a MemoryStore, a fake companion):
companions are probed before anything changes, their facts feed the record the backend
publishes, and a tick whose facts changed (a rotated key) publishes again under the same
subnet lease."""

from __future__ import annotations

import threading

import pytest

from muslin.backends.model import ClusterConfig
from muslin.control import agent as agent_mod
from muslin.control.agent import Agent, hosts_prefix, init_config, list_hosts
from muslin.model.errors import Unsupported
from muslin.store.memory import MemoryStore


class FakeWireGuard:
    missing = ""
    key = "PUB1="
    made: list = []

    def __init__(self, state_dir, network, log, options):
        self.options = options
        self.ticks = 0
        FakeWireGuard.made.append(self)

    @staticmethod
    def probe() -> str:
        if FakeWireGuard.missing:
            raise Unsupported(f"wireguard backend: this host cannot run WireGuard: {FakeWireGuard.missing}")
        return "wireguard-go"

    def facts(self, create: bool = True) -> dict:
        return {"ifname": "mw-n-0000", "impl": "wireguard-go", "key_file": "/k", "public_key": FakeWireGuard.key}

    def tick(self) -> bool:
        self.ticks += 1
        return self.ticks > 1

    def ensure(self, config: str) -> None:
        pass

    def status(self) -> dict:
        return {}

    def stop(self) -> None:
        pass


@pytest.fixture(autouse=True)
def fake(monkeypatch):
    FakeWireGuard.missing, FakeWireGuard.key, FakeWireGuard.made = "", "PUB1=", []
    real = agent_mod.companion_class
    monkeypatch.setattr(agent_mod, "companion_class", lambda n: FakeWireGuard if n == "wireguard" else real(n))


def wg_agent(store, tmp_path, host="a"):
    a = Agent(store, "n", host, tmp_path / host, log=lambda m: None)
    a.cfg = ClusterConfig("n", backend="wireguard", options={"port": 51999, "rotate_every": 60})
    a.underlay_dev = "eth0"
    return a


def test_the_record_carries_what_the_backend_publishes_from_the_companions_facts(tmp_path):
    s = MemoryStore()
    a = wg_agent(s, tmp_path)
    a.register("10.0.0.1", "10.0.0.0/24", 1500)
    rec = list_hosts(s, "n")["a"][0]
    assert rec.get("public_key") == "PUB1=" and rec.get("endpoint") == "10.0.0.1:51999"
    assert "key_file" not in rec.to_dict()["published"] and a.local.fact("key_file") == "/k"
    assert FakeWireGuard.made[0].options == {"port": 51999, "strict": True, "keepalive": 25, "rotate_every": 60}


def test_a_rotated_key_is_published_again_under_the_same_subnet_lease(tmp_path):
    s = MemoryStore()
    a = wg_agent(s, tmp_path)
    a.register("10.0.0.1", "10.0.0.0/24", 1500)
    lease, rev = a.lease, s.revision()
    assert a.tick() is False  # nothing to do
    FakeWireGuard.key = "PUB2="
    assert a.tick() is True
    kv = s.get(hosts_prefix("n") + "a")
    assert kv.value["published"]["public_key"] == "PUB2=" and kv.lease == lease
    assert [e.type for e in s.watch(hosts_prefix("n"), rev + 1, timeout=0.1)] == ["put"]  # one event, no delete


def test_a_host_that_cannot_run_the_backend_is_refused_before_anything_changes(tmp_path, monkeypatch):
    s = MemoryStore()
    init_config(s, ClusterConfig("n", backend="wireguard"), probe=False)
    rev = s.revision()
    FakeWireGuard.missing = "no wireguard-go binary (apt-get install wireguard-go)"
    with pytest.raises(Unsupported, match="no wireguard-go binary"):
        init_config(s, ClusterConfig("m", backend="wireguard"))
    a = Agent(s, "n", "a", tmp_path / "a", log=lambda m: None)
    monkeypatch.setattr(a, "overlay", lambda: pytest.fail("the kernel was touched"))
    with pytest.raises(Unsupported, match="no wireguard-go binary"):
        a.join(threading.Event())
    assert s.revision() == rev and not (tmp_path / "a").exists()

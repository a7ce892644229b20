"""cli/fast.py's parser: which `muslin` command lines may go to muslind (policy apply and
delete with the options it knows), and which run the CLI (everything else)."""

from __future__ import annotations

import os

import pytest

from muslin.cli import fast

ENV = {"MUSLIN_STATE_DIR": "/tmp/mt-state"}
FAST_CONFIG = fast.DEFAULT_CONFIG  # (before the fixture below points it elsewhere)


@pytest.fixture(autouse=True)
def no_config(monkeypatch):
    monkeypatch.setattr(fast, "DEFAULT_CONFIG", "/nonexistent/muslind.toml")


def test_apply_and_delete_are_forwarded():
    r = fast.parse(["policy", "apply", "-f", "a.yaml", "--filename=b.yaml", "-n", "x", "-o", "json"], ENV)
    assert r["op"] == "apply" and r["files"] == ["a.yaml", "b.yaml"] and r["namespace"] == "x"
    assert r["output"] == "json" and r["state_dir"] == "/tmp/mt-state"
    assert r["netns"] == os.stat("/proc/self/ns/net").st_ino
    r = fast.parse(["--state-dir", "rel", "policy", "delete", "x/a", "b", "--ignore-not-found"], ENV)
    assert r["names"] == ["x/a", "b"] and r["ignore_not_found"] and r["state_dir"] == os.path.abspath("rel")
    assert fast.parse(["--state-dir=/s", "policy", "delete", "-f", "-"], ENV)["files"] == ["-"]


@pytest.mark.parametrize("argv", [
    [], ["policy"], ["policy", "ls"], ["network", "ls"], ["--version"], ["policy", "apply"],  # no -f: the CLI says so
    ["policy", "--cluster-store", "etcd://x:2379", "apply", "-f", "a"], ["policy", "apply", "-f", "a", "-o", "yaml"],
    ["policy", "apply", "-f", "a", "--dry-run"], ["policy", "apply", "-f"], ["policy", "apply", "-f", "-", "-f", "-"],
    ["policy", "delete", "x", "-o", "json"], ["-v", "policy", "apply", "-f", "a"], ["policy", "apply", "x", "-f", "a"],
    ["--host-netns", "mt-no-such-netns-here", "policy", "apply", "-f", "a"],
])
def test_anything_else_runs_the_cli(argv):
    assert fast.parse(argv, ENV) is None


def test_a_cluster_store_runs_the_cli(monkeypatch, tmp_path):
    assert fast.parse(["policy", "apply", "-f", "a"], {**ENV, "MUSLIN_CLUSTER_STORE": "etcd://x:2379"}) is None
    (tmp_path / "muslind.toml").write_text("")
    monkeypatch.setattr(fast, "DEFAULT_CONFIG", str(tmp_path / "muslind.toml"))
    assert fast.parse(["policy", "apply", "-f", "a"], ENV) is None


def test_no_agent_runs_the_cli(tmp_path):
    req = fast.parse(["policy", "apply", "-f", "a"], ENV)
    assert fast.forward(req, {"MUSLIN_AGENT_SOCKET": str(tmp_path / "none.sock")}) is None


def test_its_defaults_are_the_daemons():
    """cli/fast.py keeps its own copies (it imports nothing of Muslin's): they must not drift."""
    from muslin.control import settings
    from muslin.store import DEFAULT_STATE_DIR

    assert (fast.DEFAULT_SOCKET, fast.DEFAULT_STATE_DIR, FAST_CONFIG) == (
        settings.DEFAULT_AGENT_SOCKET, DEFAULT_STATE_DIR, settings.DEFAULT_CONFIG)

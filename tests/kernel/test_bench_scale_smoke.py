"""Smoke runs of the simulated cluster (`python -m bench --smoke --only scale`, `muslin lab
simulate`): that it works and leaves no etcd or temp dir behind, not how fast (no timed
assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nsutil import tool

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]


def _sims() -> set[str]:
    """Our simulator's etcds (their data dir is a muslin-sim- temp dir) and temp dirs."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    procs = {ln.split()[0] for ln in ps.splitlines() if "etcd" in ln and "muslin-sim-" in ln}
    return procs | {str(p) for p in Path(tempfile.gettempdir()).glob("muslin-sim-*")}


def _check(r: dict, hosts: int, agents: int) -> None:
    assert r["hosts"] == hosts and r["agents"] == agents and r["watchers"] == hosts - agents
    idle, prop = r["idle"], r["propagation"]
    assert idle["watch_streams"] >= hosts  # one long-lived stream per simulated host
    assert idle["etcd_rss_mb"] > 0 and idle["etcd_cpu_pct"] >= 0
    assert prop["not_known_within_60s"] == 0, prop  # every agent and watcher saw each join and leave
    assert prop["join_all_s"]["n"] >= 1 and prop["leave_all_s"]["n"] >= 1
    ch = r["churn"]
    assert ch["ops"] >= 2 and ch["not_known_within_30s"] == 0, ch
    assert ch["watch_events_sent_per_s"] > 0 and "join_all_s" in ch


def test_bench_scale_smoke(tmp_path):
    before = _sims()
    p = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "scale", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())["scale"]
    assert "error" not in res, res
    _check(res["3"], 3, 3)
    one = res["3"]["one_agent"]
    assert one["peer_event_ms"] > 0 and one["full_reconcile_ms"] >= 0
    assert "join known by all" in p.stdout
    assert _sims() <= before, "the simulator left an etcd or its temp dir behind"


def test_lab_simulate_cli(tmp_path):
    before = _sims()
    p = subprocess.run([tool("muslin"), "lab", "simulate", "--hosts", "5", "--agents", "2", "--idle", "1",
                        "--joins", "1", "--churn", "2", "--churn-seconds", "2", "-o", "json"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    _check(json.loads(p.stdout), 5, 2)
    assert _sims() <= before
    bad = subprocess.run([tool("muslin"), "lab", "simulate", "--hosts", "0"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--hosts" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_lab_idle_smoke():
    """bench/lab_idle.py on a 2-host lab: each host's muslind (agent, DNS feed, service
    members) keeps its watches open: no stream re-created every second (a count, not a time)."""
    p = subprocess.run([sys.executable, "-m", "bench.lab_idle", "--hosts", "2", "--seconds", "3"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["watch_streams_open"] >= 2
    assert r["new_watch_streams"] <= 2, r  # at most one per agent (a dropped stream reopened)

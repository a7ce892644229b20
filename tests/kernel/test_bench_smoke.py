"""Smoke run of the benchmarks (`python -m bench --smoke`): that they work and clean up,
not how fast anything is (no timed assertions)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_bench_smoke(tmp_path):
    before = _netns()
    p = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "proc,cni,activation,iperf", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    seen = {(s["variant"], s["verb"]) for s in res["cni"]}
    for v in ("reference", "muslin-agent", "muslin-inproc"):
        for verb in ("ADD", "DEL", "ADDx8", "DELx8"):
            assert (v, verb) in seen, (v, verb)
    assert all(s["n"] > 0 and s["p50_ms"] > 0 for s in res["cni"])
    assert res["muslind_rss_mb"] and all(v > 0 for v in res["muslind_rss_mb"].values())
    proc = res["proc"]
    assert "skipped" in proc or all(v["n"] > 0 for v in proc.values() if isinstance(v, dict)), proc
    act = res["activation"]
    assert "skipped" in act or all(act[k]["first_add_ms"] > 0 for k in ("reference", "in-process",
                                                                         "socket activation")), act
    assert res["iperf"]["raw_veth_gbps"] > 0 and res["iperf"]["muslin_bridge_gbps"] > 0
    assert "muslin-agent" in p.stdout and "ADD p50 ms" in p.stdout
    assert (tmp_path / "cni_latency.png").stat().st_size > 0
    assert (tmp_path / "results.md").read_text().startswith("Run `python -m bench")
    leaked = {n for n in _netns() - before if re.match(r"^m[bi][0-9a-f]{4}-", n)}
    assert not leaked, f"bench left namespaces behind: {sorted(leaked)}"

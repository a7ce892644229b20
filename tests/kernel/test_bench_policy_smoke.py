"""Smoke run of bench/policy.py (`python -m bench.policy --smoke`): that it works and cleans
up, not how fast anything is (no timed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_bench_policy_smoke(tmp_path):
    before = _netns()
    p = subprocess.run([sys.executable, "-m", "bench.policy", "--smoke", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((tmp_path / "policy.json").read_text())
    assert res["enforce"]["apply_to_denied"]["n"] == 3 and res["enforce"]["delete_to_allowed"]["n"] == 3
    assert res["enforce"]["inprocess_apply_to_denied"]["n"] == 3
    assert res["enforce"]["inprocess_delete_to_allowed"]["n"] == 3
    assert res["enforce"]["forwarded_apply_to_denied"]["n"] == 3
    assert res["first_packet"]["2"]["connect_p50_us"] > 0 and res["first_packet"]["20"]["connect_p50_us"] > 0
    rows = res["scale"]
    assert [r["endpoints"] for r in rows] == [9, 100]
    assert rows[1]["set_elements"] > rows[0]["set_elements"] > 0
    assert len({r["rules"] for r in rows}) == 1  # the rule count does not follow the endpoints
    assert not {n for n in _netns() - before if n.startswith("mbpo")}, "bench left namespaces behind"

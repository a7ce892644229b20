"""Smoke run of bench/policy_lab.py (`python -m bench.policy_lab --smoke`): that it works and
cleans up, not how fast anything is (no timed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.client]

ROOT = Path(__file__).resolve().parents[2]


def test_bench_policy_lab_smoke(tmp_path):
    from muslin.lab import core

    p = subprocess.run([sys.executable, "-m", "bench.policy_lab", "--smoke", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((tmp_path / "policy_lab.json").read_text())["cross_host"]
    assert {k: v["n"] for k, v in res.items()} == {"pod_label_allowed": 1, "pod_label_denied": 1,
                                                  "namespace_label_allowed": 1, "namespace_label_denied": 1,
                                                  "pod_label_command": 2, "namespace_label_command": 2}
    assert not [n for n in core.netns_list() if n.startswith("mlab-bp")], "bench left lab namespaces behind"

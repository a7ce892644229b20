"""Smoke run of the DNS benchmark (`python -m bench --smoke --only dns`): that it works and
cleans up, not how fast (numbers are docs/benchmarks.md's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(900)]


def test_bench_dns_smoke(tmp_path):
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    p = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "dns", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=800)
    assert p.returncode == 0, p.stderr[-2000:] + p.stdout[-2000:]
    dns = json.loads((tmp_path / "results.json").read_text())["dns"]
    assert "error" not in dns, dns
    assert dns["local_1000qps"]["lost"] == 0 and dns["restart_under_100qps"]["lost"] == 0
    after = {n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
             if n.startswith("mbd-")}
    assert not after - before, f"bench left namespaces behind: {sorted(after - before)}"

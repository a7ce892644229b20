"""Smoke run of the services benchmark (`python bench/services.py --smoke`): that it works
and cleans up, not how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


def netns() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_bench_services_smoke():
    before = netns()
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "services.py"), "--smoke"], capture_output=True,
                       text=True, timeout=500, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert [r["services"] for r in res["levels"]] == [10, 50]
    assert all(r["full_sync_s"] > 0 and r["connect_ms_median"] > 0 for r in res["levels"])
    left = {n for n in netns() - before if n.startswith("mbs-")}
    assert not left, f"bench left namespaces behind: {sorted(left)}"

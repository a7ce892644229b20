"""The README's first command: the demo builds a network whose sandboxes ping, and
`demo down` removes every namespace, link and file it made."""

from __future__ import annotations

import json

import pytest
from nsutil import sh, tool

pytestmark = pytest.mark.kernel


def test_demo_up_pings_and_down_removes_everything(tmp_path, monkeypatch):
    record = tmp_path / "demo.json"
    env = {"MUSLIN_DEMO_RECORD": str(record), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    before = set(sh("ip", "netns", "list").stdout.split())
    try:
        up = sh(tool("muslin"), "demo", "up", env=env, timeout=120)
        assert "3 received" in up.stdout
        rec = json.loads(record.read_text())
        assert rec["host"] in sh("ip", "netns", "list").stdout
        again = sh(tool("muslin"), "demo", "up", env=env, check=False)
        assert again.returncode == 4 and "already up" in again.stderr
    finally:
        sh(tool("muslin"), "demo", "down", env=env, check=False)
    after = {n for n in sh("ip", "netns", "list").stdout.split() if not n.startswith("(")}
    assert not {n for n in after - before if "demo" in n}
    assert not record.exists()

"""dataplane.nft without a kernel: parsing `nft -j` output, sync's decisions, errors, lock.

golden/firewall/ports.listing.json is real `nft -j list table inet muslin` output (nft 1.0.6)
for the "ports" state of test_firewall.py; to regenerate it, as root in a throwaway netns:
  ip netns exec NS .venv/bin/python -c "import sys; sys.path.insert(0,'tests/unit'); \
    from test_firewall import STATES; from muslin.dataplane import nft; nft.sync(STATES['ports'], '')"
  ip netns exec NS nft -j list table inet muslin | python3 -m json.tool > tests/unit/golden/firewall/ports.listing.json
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from muslin.dataplane import nft
from muslin.dataplane.nslock import netns_lock
from muslin.firewall import FirewallState, compile, render_delete, render_full

from muslin.firewall.compiler import RULE_COMMENT, owner_mark
from muslin.model.errors import Conflict, Invalid, Unavailable, Unsupported
from test_firewall import NET0, PORTS, STATES, port

LISTING = Path(__file__).parent / "golden" / "firewall" / "ports.listing.json"


def listing() -> dict:
    data = json.loads(LISTING.read_text())
    for item in data["nftables"]:
        if "rule" in item:
            item["rule"]["comment"] = RULE_COMMENT  # the digest of the current code
    return data


def test_parse_real_listing_roundtrips():
    rs = nft.parse(listing())
    assert rs == compile(STATES["ports"])
    assert rs.same_skeleton(compile(FirewallState(networks=(NET0,))))


def test_parse_detects_drift():
    data = listing()
    rules = [i for i in data["nftables"] if "rule" in i]
    data["nftables"].remove(rules[0])  # a rule deleted by hand
    assert nft.parse(data).digest == "drift"
    data = listing()
    data["nftables"].append({"rule": {"family": "inet", "table": "muslin", "chain": "forward", "expr": []}})
    assert nft.parse(data).digest == "drift"
    data = listing()
    for i in data["nftables"]:
        if "rule" in i:
            i["rule"]["comment"] = "muslin 0000"  # written by another version of this code
    assert nft.parse(data).digest == "drift"
    data = listing()
    for i in data["nftables"]:
        if i.get("chain", {}).get("name") == "forward":
            i["chain"]["prio"] = 10
    assert nft.parse(data).digest == "drift"


def test_parse_normalises_numbers_and_wrapped_elements():
    data = listing()
    for i in data["nftables"]:
        s = i.get("map")
        if s and s["name"] == "ports4":
            s["elem"] = [[{"concat": [6, 8080]}, {"concat": ["10.88.0.2", 80]}],
                         [{"elem": {"val": {"concat": ["udp", 5353]}, "comment": "x"}}, {"concat": ["10.88.0.2", 53]}]]
    assert nft.parse(data).elements["ports4"] == compile(STATES["ports"]).elements["ports4"]


class FakeNft:
    """Stands in for the nft binary: records scripts, keeps a Ruleset as 'the kernel'."""

    def __init__(self, present=None):
        self.table = present
        self.scripts: list[str] = []

    def run(self, args, input=None, doing=""):
        if args[:2] == ["-j", "list"]:
            if self.table is None:
                return subprocess.CompletedProcess(args, 1, "", "Error: No such file or directory\n")
            return subprocess.CompletedProcess(args, 0, "{}", "")
        assert args == ["-f", "-"]
        self.scripts.append(input)
        return subprocess.CompletedProcess(args, 0, "", "")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    f = FakeNft()
    monkeypatch.setattr(nft, "_run", f.run)
    monkeypatch.setattr(nft, "parse", lambda _data: f.table)
    monkeypatch.setattr(nft, "apply_sysctls", lambda values: None)
    monkeypatch.setattr(nft.guard_nft, "sync_script", lambda guards, delete=False: "")  # test_antispoof.py
    return f


OWNER = owner_mark("/var/lib/muslin-test")


def test_sync_decisions(fake):
    state = STATES["ports"]
    assert nft.sync(state, OWNER) == "full"
    assert fake.scripts[-1] == render_full(compile(state, OWNER))
    assert f'add rule inet muslin owner return comment "{OWNER}"' in fake.scripts[-1]
    fake.table = compile(state, OWNER)
    assert nft.sync(state, OWNER) == "noop"
    smaller = FirewallState(networks=state.networks, ports=PORTS[:3])
    assert nft.sync(smaller, OWNER) == "delta"
    assert all(line.startswith("delete element") for line in fake.scripts[-1].splitlines())
    fake.table = compile(smaller).__class__(skeleton="", elements={}, digest="drift", owner=OWNER)
    assert nft.sync(state, OWNER) == "full"
    fake.table = compile(state)  # a table of an older Muslin, without a mark: made ours
    assert nft.sync(state, OWNER) == "full"
    fake.table = compile(state, OWNER)
    assert nft.sync(FirewallState(), OWNER) == "deleted"
    assert fake.scripts[-1] == render_delete()
    fake.table = None
    n = len(fake.scripts)
    assert nft.sync(FirewallState(), OWNER) == "noop" and len(fake.scripts) == n


def test_sync_refuses_another_state_dirs_table(fake):
    fake.table = compile(STATES["ports"], owner_mark("/srv/other"))
    n = len(fake.scripts)
    for state in (STATES["ports"], FirewallState()):
        with pytest.raises(Conflict, match="managed by Muslin with state dir /srv/other"):
            nft.sync(state, OWNER)
    assert len(fake.scripts) == n  # nothing written, nothing deleted


def test_parse_reads_the_owner_mark():
    data = listing()
    data["nftables"] += [{"chain": {"family": "inet", "table": "muslin", "name": "owner", "handle": 99}},
                         {"rule": {"family": "inet", "table": "muslin", "chain": "owner", "comment": OWNER,
                                   "expr": [{"return": None}]}}]
    rs = nft.parse(data)
    assert rs.owner == OWNER and rs.digest != "drift"


def test_sync_rejects_bad_state_before_touching_nft(fake):
    bad = FirewallState(networks=(NET0,), ports=(port("a", 80, "10.88.0.2", 80), port("b", 80, "10.88.0.3", 80)))
    with pytest.raises(Exception, match="mapped twice"):
        nft.sync(bad, OWNER)
    assert fake.scripts == []


def test_nft_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("MUSLIN_NFT", "binary")
    monkeypatch.setattr(nft.shutil, "which", lambda name: None)
    monkeypatch.setattr(nft.os, "access", lambda p, mode: False)
    with pytest.raises(Unsupported, match="nftables: nft binary not found"):
        nft.sync(STATES["ports"], OWNER)


@pytest.mark.parametrize("stderr, kind", [
    ("/dev/stdin:1:33-43: Error: interval overlaps with an existing one\nadd element ...\n   ^^^\n", Invalid),
    ("Error: Could not process rule: Operation not permitted\n", Unavailable),
    ("Error: Could not process rule: Operation not supported\n", Unsupported),
])
def test_nft_errors_are_one_line(monkeypatch, stderr, kind):
    monkeypatch.setattr(nft, "_run", lambda args, input=None, doing="": subprocess.CompletedProcess(args, 1, "", stderr))
    with pytest.raises(kind) as ei:
        nft.apply("add element inet muslin nets4 { 10.0.0.0/8 }", doing="update")
    msg = str(ei.value)
    assert msg.startswith("nftables: update: ") and "\n" not in msg and "Error:" not in msg


def test_namespace_lock_is_exclusive_and_released():
    import socket

    with netns_lock("test-" + str(os.getpid())):
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with pytest.raises(OSError):  # held: its abstract name is bound
                other.bind(f"\0muslin/test-{os.getpid()}")
            with pytest.raises(Unavailable, match="still held"):
                with netns_lock("test-" + str(os.getpid()), timeout=0.05):
                    pass
        finally:
            other.close()
    with netns_lock("test-" + str(os.getpid()), timeout=0.05):  # released after the block
        pass

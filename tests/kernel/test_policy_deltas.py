"""Policy deltas in a real nft table: a sequence of unrelated random policy inputs (the
generator of tests/unit/test_policy_compile.py: classes change, map values change, ipBlocks,
named ports and port ranges come and go), each synced into a throwaway namespace's table as
one delta batch; after each the kernel's elements are exactly the compiled ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

UNIT = Path(__file__).resolve().parents[1] / "unit"

SCRIPT = r"""
import ipaddress, random, sys
sys.path.insert(0, sys.argv[1])
from test_policy_compile import random_input
from muslin.dataplane import nft
from muslin.firewall.compiler import compile
from muslin.firewall.policy import SET_NAMES
from muslin.firewall.state import FirewallState, NetRule

net = NetRule("mtpolbr0", (ipaddress.ip_network("10.9.0.0/24"),))
done = []
for seed in range(int(sys.argv[2])):
    state = FirewallState(networks=(net,), policy=random_input(random.Random(seed)))
    done.append(nft.sync(state, ""))
    got, want = nft.observe().elements, compile(state, "").elements
    for name in SET_NAMES:
        assert got[name] == want[name], (seed, name, sorted(got[name] ^ want[name])[:5])
print(" ".join(done))
"""


def test_random_policy_changes_apply_as_deltas(netns):
    ns = netns("host")
    out = ns.run(sys.executable, "-c", SCRIPT, str(UNIT), "30", timeout=300).stdout.split()
    assert out[0] == "full" and len(out) == 30
    assert set(out[1:]) <= {"delta", "noop"} and "delta" in out[1:]  # never a full replace

"""A process killed half-way through an attach leaves nothing that cleanup cannot find."""

from __future__ import annotations

import json
import sys

import pytest
from nsutil import random_subnet24, sh
from test_cli_bridge import host_links, world  # noqa: F401 - fixture

pytestmark = pytest.mark.kernel

CRASH = r"""
import os, sys
from muslin.dataplane import links
from muslin.control import sandboxes
from muslin.control.service import Muslin
def die(*a, **k):
    os._exit(9)  # the kernel has a veth and the store an address; no endpoint record yet
links.sandbox_setup = die
m = Muslin(state_dir=sys.argv[1])
sandboxes.connect(m, "net", sys.argv[2], "eth0", (), "", ())
"""


def test_killed_connect_is_cleaned_by_sandbox_rm(world):
    w = world
    w.muslin("network", "create", "net", "--subnet", random_subnet24())
    a = w.sandbox("a")
    r = w.host.run(sys.executable, "-c", CRASH, w.state, a, check=False)
    assert r.returncode == 9
    assert host_links(w) - {"mus-net"}, "the crash should have left a veth behind"
    owners = sh(sys.executable, "-c", "import sys,json;from muslin.store import open_store;"
                "print(json.dumps([k.key for k in open_store(sys.argv[1]).list('ipam-owner/')]))", w.state).stdout
    assert json.loads(owners) == [f"ipam-owner/cli/{a}/net/eth0"]
    w.muslin("sandbox", "rm", a)
    assert host_links(w) == {"mus-net"}
    owners = sh(sys.executable, "-c", "import sys,json;from muslin.store import open_store;"
                "print(json.dumps([k.key for k in open_store(sys.argv[1]).list('ipam')]))", w.state).stdout
    assert [k for k in json.loads(owners) if "/ip/" in k or k.startswith("ipam-owner/")] == []
    w.muslin("network", "rm", "net")
    assert host_links(w) == set()

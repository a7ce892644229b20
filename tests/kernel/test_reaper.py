"""DEL through muslind retires the veth (off the bridge, down, in the reap group) and a reaper
deletes a burst of them in one message: nothing is left queued shortly after; an address a
retired link holds goes to no one else before the reap, and asking for it reaps at once;
after a kill -9 before the reap, the next muslind reaps what the dead one left."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from nsutil import Muslind, random_subnet24, sh, tool

from muslin.model.names import REAP_GROUP

pytestmark = pytest.mark.kernel


def retired(host) -> list[str]:
    out = sh("ip", "-n", host.name, "-j", "link", "show", "group", str(REAP_GROUP)).stdout
    return [ln["ifname"] for ln in json.loads(out or "[]") if ln]  # (iproute2 prints {} for the others)


def reap_owners(state) -> list[str]:
    import sys

    out = sh(sys.executable, "-c", "import sys,json;from muslin.store import open_store;"
             "print(json.dumps(open_store(sys.argv[1]).keys('ipam-owner/reap/')))", str(state)).stdout
    return json.loads(out)


class Plugin:
    def __init__(self, host, sock, subnet: str, state) -> None:
        self.host, self.sock = host, sock
        self.conf = {"cniVersion": "1.0.0", "name": "rp", "type": "muslin-cni", "isGateway": True,
                     "isDefaultGateway": True, "dataDir": str(state),
                     "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": subnet}]]}}

    def call(self, cmd: str, c, args: str = "") -> dict | None:
        env = [f"CNI_COMMAND={cmd}", f"CNI_CONTAINERID={c.name}", "CNI_IFNAME=eth0", f"CNI_NETNS={c.path}",
               "CNI_PATH=/usr/lib/cni", f"MUSLIN_AGENT_SOCKET={self.sock}"] + ([f"CNI_ARGS={args}"] if args else [])
        p = self.host.run("env", *env, tool("muslin-cni"), input=json.dumps(self.conf), check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        return json.loads(p.stdout) if p.stdout.strip() else None


def wait_for(pred, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_a_burst_of_dels_is_reaped(netns, tmp_path):
    host = netns("host")
    state = tmp_path / "state"
    with Muslind(host, state) as d:
        p = Plugin(host, d.sock, random_subnet24(), state)
        cs = [netns(f"c{i}") for i in range(10)]
        for c in cs:
            p.call("ADD", c)
        for c in cs:
            assert p.call("DEL", c) is None
        assert wait_for(lambda: not retired(host) and not reap_owners(state))
        assert not [n for n in host.links() if n.startswith("mv")]


def test_held_addresses_and_a_kill_before_the_reap(netns, tmp_path):
    host = netns("host")
    state = tmp_path / "state"
    subnet = random_subnet24()
    fixed = subnet.replace(".0/24", ".50")
    d = Muslind(host, state, "--reap-delay", "600")
    try:
        p = Plugin(host, d.sock, subnet, state)
        a, b, c = netns("a"), netns("b"), netns("c")
        ra = p.call("ADD", a, f"IP={fixed}")
        p.call("ADD", b)
        p.call("DEL", b)
        p.call("DEL", a)
        assert len(retired(host)) == 2 and len(reap_owners(state)) == 2
        assert not a.ping(ra["ips"][0]["gateway"])  # retired: off the bridge and down at once
        rc = p.call("ADD", c, f"IP={fixed}")  # held by a's retired link: asking for it reaps now
        assert rc["ips"][0]["address"].startswith(fixed + "/") and not retired(host)
        p.call("DEL", c)
        assert len(retired(host)) == 1
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait()
    finally:
        d.stop()
    with Muslind(host, state):  # reaps what the dead one left, at start
        assert wait_for(lambda: not retired(host) and not reap_owners(state))

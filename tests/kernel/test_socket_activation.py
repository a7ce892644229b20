"""Socket activation, the chosen answer to "no interpreter per call without a running muslind"
(issue 9, item 5): the installed `muslind.socket` unit holds the CNI socket and systemd starts
muslind on the first connection. Here `systemd-socket-activate` (the same LISTEN_FDS protocol
systemd uses) plays systemd inside a throwaway host namespace: the first ADD through the native
forwarder starts muslind, which serves it on the inherited socket; in-process work is blocked,
so nothing else could have answered. muslind keeps serving; DEL leaves nothing."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from nativeutil import needs_native
from nsutil import VENV_BIN, suffix, tool

pytestmark = [pytest.mark.kernel, needs_native,
              pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                                 reason="systemd-socket-activate is not installed (Debian package systemd)")]


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_first_add_starts_muslind_on_the_socket_systemd_holds(netns, tmp_path):
    host, c1, c2 = netns("host"), netns("c1"), netns("c2")
    state, sock = tmp_path / "state", str(tmp_path / "agent.sock")
    state.mkdir()
    blocked = tmp_path / "no-in-process"
    blocked.mkdir()
    (blocked / "sitecustomize.py").write_text("import sys\nsys.modules['muslin.cni.handler'] = None\n")
    log = open(tmp_path / "activate.log", "w")
    act = host.popen("systemd-socket-activate", "-l", sock, tool("muslind"), "--docker-socket", "",
                     "--agent-socket", sock, "--state-dir", str(state), "--reconcile-interval", "0",
                     "--log-level", "warning", stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        for _ in range(100):
            if os.path.exists(sock) or act.poll() is not None:
                break
            time.sleep(0.05)
        assert os.path.exists(sock), (tmp_path / "activate.log").read_text()
        assert _comm(act.pid).startswith("systemd-socket") and not _children(act.pid)  # no muslind yet

        subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        net = {"cniVersion": "1.0.0", "name": "act" + suffix(), "type": "muslin-cni", "isGateway": True,
               "agentSocket": sock, "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": f"{subnet}.0/24"}]]}}

        def call(cmd: str, c) -> tuple[int, str]:
            env = {"PATH": os.environ["PATH"], "CNI_COMMAND": cmd, "CNI_PATH": f"{VENV_BIN}:/usr/lib/cni",
                   "CNI_CONTAINERID": c.name, "CNI_IFNAME": "eth0", "CNI_NETNS": c.path,
                   "PYTHONPATH": str(blocked)}
            p = subprocess.run(["ip", "netns", "exec", host.name, "env", "-i",
                                *[f"{k}={v}" for k, v in env.items()], str(VENV_BIN / "muslin-cni")],
                               input=json.dumps(net).encode(), capture_output=True, timeout=120)
            return p.returncode, p.stdout.decode() + p.stderr.decode()

        rc, out = call("ADD", c1)  # the connection that makes systemd-socket-activate exec muslind
        assert rc == 0, (out, (tmp_path / "activate.log").read_text())
        assert json.loads(out)["ips"][0]["address"].startswith(subnet)
        assert _comm(act.pid) == "muslind", _comm(act.pid)  # the same process, exec'd into muslind
        rc, out = call("ADD", c2)
        assert rc == 0, out
        assert c1.ping(f"{subnet}.1") and c1.ping(json.loads(out)["ips"][0]["address"].split("/")[0])
        assert call("DEL", c1) == (0, "") and call("DEL", c2) == (0, "")
        assert host.links_after_reap() == ["lo"]
        assert act.poll() is None  # still serving
    finally:
        act.terminate()
        try:
            act.wait(10)
        except subprocess.TimeoutExpired:
            act.kill()
            act.wait()

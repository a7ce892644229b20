"""The native muslin-cni/muslin-ipam with a real muslind and real namespaces: the same
results whether a call goes through the agent (framing 2) or falls back to in-process
work (the Python entry exec'd with stdin intact), and the same as the Python entry's own
(framing 1, or in-process): ADD results, CHECK, DEL, errors, exit status; the config's
`agentSocket` is honoured; a large prevResult goes through either way."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

import pytest

from nativeutil import needs_native
from nsutil import VENV_BIN, Netns, suffix, tool

pytestmark = [pytest.mark.kernel, needs_native]

REF = "/usr/lib/cni"


class Host:
    """A host namespace, muslind in it, and the plugins driven like a runtime does."""

    def __init__(self, netns, tmp: Path) -> None:
        self.ns = netns("host")
        self.tmp = tmp
        self.state = tmp / "state"
        self.state.mkdir()
        self.sock = str(tmp / "agent.sock")
        self.blocked = tmp / "no-in-process"
        self.blocked.mkdir()
        (self.blocked / "sitecustomize.py").write_text("import sys\nsys.modules['muslin.cni.handler'] = None\n")
        self.plugins = tmp / "plugins"
        self.plugins.mkdir()
        for name in ("muslin-cni", "muslin-ipam", "muslin-cni-py", "muslin-ipam-py"):
            if not (VENV_BIN / name).exists():
                pytest.skip(f"{name} is not installed (scripts/setup.sh installs it with the native forwarder)")
        log = open(tmp / "muslind.log", "w")
        self.daemon = self.ns.popen(tool("muslind"), "--docker-socket", "", "--agent-socket", self.sock,
                                    "--state-dir", str(self.state), "--reconcile-interval", "0",
                                    "--log-level", "warning", stdout=log, stderr=subprocess.STDOUT)
        log.close()
        for _ in range(150):
            if os.path.exists(self.sock) or self.daemon.poll() is not None:
                break
            time.sleep(0.1)
        assert os.path.exists(self.sock), (tmp / "muslind.log").read_text()

    def stop(self) -> None:
        self.daemon.terminate()
        try:
            self.daemon.wait(10)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()

    def way(self, name: str) -> "Way":
        """native|python - agent|inproc: which executable, and whether muslind is reachable."""
        impl, where = name.split("-")
        d = self.plugins / name
        d.mkdir(exist_ok=True)
        for p in ("muslin-cni", "muslin-ipam"):
            if not (d / p).exists():
                (d / p).symlink_to(VENV_BIN / (p if impl == "native" else p + "-py"))
        sock = self.sock if where == "agent" else str(self.tmp / "no-agent.sock")
        return Way(self, d, sock, blocked=where == "agent")


class Way:
    def __init__(self, host: Host, plugin_dir: Path, sock: str, blocked: bool) -> None:
        self.host, self.dir, self.sock, self.blocked = host, plugin_dir, sock, blocked

    def call(self, cmd: str, conf: dict | str, c: Netns | None = None, args: str = "", plugin: str = "muslin-cni",
             netns: str | None = None, extra_env: dict | None = None) -> tuple[int, str]:
        """The socket comes from the config's agentSocket (no MUSLIN_AGENT_SOCKET): the forwarder
        reads stdin to find it, so a fallback hands stdin on through a memfd."""
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": cmd, "CNI_PATH": f"{self.dir}:{REF}",
               "MUSLIN_STATE_DIR": str(self.host.state), **(extra_env or {})}
        if self.blocked:  # falling back to in-process work would fail here: the agent must do it
            env["PYTHONPATH"] = str(self.host.blocked)
        if c is not None or netns is not None:
            env.update(CNI_CONTAINERID=c.name if c else "cid", CNI_IFNAME="eth0",
                       CNI_NETNS=netns if netns is not None else c.path)
        if args:
            env["CNI_ARGS"] = args
        if isinstance(conf, dict):
            conf = json.dumps({**conf, "agentSocket": self.sock})
        elif '"agentSocket"' not in conf:  # e.g. not JSON: only the environment can name the socket
            env.setdefault("MUSLIN_AGENT_SOCKET", self.sock)
        p = subprocess.run(["ip", "netns", "exec", self.host.ns.name, "env", "-i",
                            *[f"{k}={v}" for k, v in env.items()], str(self.dir / plugin)],
                           input=conf.encode(), capture_output=True, timeout=120)
        out = p.stdout.decode()
        assert "Traceback" not in out + p.stderr.decode(), (out, p.stderr)
        return p.returncode, out


@pytest.fixture
def host(netns, tmp_path):
    h = Host(netns, tmp_path)
    yield h
    h.stop()


def normal(out: str) -> str:
    """A result with the host-side MAC (the kernel's random choice) blanked."""
    try:
        res = json.loads(out)
    except ValueError:
        return out
    for it in res.get("interfaces", []) if isinstance(res, dict) else []:
        if not it.get("sandbox"):
            it["mac"] = "HOST-MAC"
    return json.dumps(res, sort_keys=True)


WAYS = ["native-agent", "native-inproc", "python-agent", "python-inproc"]


def scenario(way: Way, netns, subnet: str) -> list:
    """ADD, CHECK, errors, DEL of two containers on one network; returns every (rc, output)."""
    net = {"cniVersion": "1.0.0", "name": "nat" + suffix(), "type": "muslin-cni", "isGateway": True,
           "ipMasq": True, "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": f"{subnet}.0/24"}]],
                                    "routes": [{"dst": "0.0.0.0/0"}]}}
    c1, c2 = netns("c1"), netns("c2")
    log = []
    r1 = way.call("ADD", net, c1, args=f"IgnoreUnknown=1;IP={subnet}.21;MAC=02:00:00:00:00:21")
    r2 = way.call("ADD", net, c2, args=f"IgnoreUnknown=1;IP={subnet}.22;MAC=02:00:00:00:00:22")
    log += [r1, r2]
    assert r1[0] == 0 and r2[0] == 0, (r1, r2)
    assert c1.ping(f"{subnet}.22") and c2.ping(f"{subnet}.1")
    prev = json.loads(r1[1])
    log.append(way.call("CHECK", {**net, "prevResult": prev}, c1))
    bad_ip = {**prev, "ips": [{"address": f"{subnet}.99/24"}]}
    log.append(way.call("CHECK", {**net, "prevResult": bad_ip}, c1))
    bad_mac = {**prev, "interfaces": [{**i, "mac": "02:ff:ff:ff:ff:ff"} for i in prev["interfaces"]]}
    log.append(way.call("CHECK", {**net, "prevResult": bad_mac}, c1))
    log.append(way.call("ADD", net, c1, args=f"IgnoreUnknown=1;IP={subnet}.23"))  # eth0 taken
    log.append(way.call("ADD", '{"cniVersion": "1.0.0", "name": ', c1))  # not JSON
    log.append(way.call("ADD", {**net, "driver": "ipvlan", "master": "lo"}, c1))  # unsupported here
    log.append(way.call("ADD", net, netns("c3"), args="IgnoreUnknown=1;IP=10.255.255.1"))  # outside the subnet
    log.append(way.call("ADD", net, netns="/run/netns/none-such-muslin-test"))
    log.append(way.call("ADD", {**net, "cniVersion": "0.4.0"}, c1, plugin="muslin-ipam"))  # IPAM: already has one
    log.append(way.call("STATUS", {**net, "cniVersion": "1.1.0"}))
    log.append(way.call("VERSION", {"cniVersion": "0.4.0"}))
    log.append(way.call("DEL", net, c1))
    log.append(way.call("DEL", net, c1))  # idempotent
    log.append(way.call("DEL", net, c2))
    log.append(way.call("GC", {**net, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []}))
    def same(out: str) -> str:  # names that differ only because each way gets its own containers
        out = normal(out).replace(c1.name, "C1").replace(c2.name, "C2")
        return re.sub(r"nat[0-9a-f]{6}", "NET", re.sub(r'"mv[0-9a-f]{11}"', '"HOST-VETH"', out))

    return [(rc, same(out)) for rc, out in log]


def test_same_results_every_way(host, netns):
    subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
    got = {w: scenario(host.way(w), netns, subnet) for w in WAYS}
    for w in WAYS[1:]:
        for i, (a, b) in enumerate(zip(got[WAYS[0]], got[w])):
            assert a == b, (i, WAYS[0], a, w, b)
    rcs = [rc for rc, _ in got[WAYS[0]]]
    assert rcs == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0], got[WAYS[0]]
    assert host.ns.links_after_reap() == ["lo"]  # everything was undone, whichever way


@pytest.mark.parametrize("way", ["native-agent", "native-inproc"])
def test_large_prev_result_round_trips(host, netns, way):
    """A ~6 MB prevResult (UTF-8 search domains) reaches the handler intact: through the agent,
    and through the memfd the forwarder hands to the in-process entry."""
    w = host.way(way)
    subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
    net = {"cniVersion": "1.0.0", "name": "big" + suffix(), "type": "muslin-cni",
           "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": f"{subnet}.0/24"}]]}}
    c = netns("c")
    rc, out = w.call("ADD", net, c)
    assert rc == 0, out
    prev = json.loads(out)
    prev["dns"] = {"search": [f"zöne-{i}.例え.test" for i in range(200_000)]}
    conf = {**net, "prevResult": prev}
    assert len(json.dumps(conf, ensure_ascii=False).encode()) > 5_000_000
    conf_text = json.dumps({**conf, "agentSocket": w.sock}, ensure_ascii=False)
    assert w.call("CHECK", conf_text, c) == (0, "")
    missing = f"{subnet}.250"
    prev["ips"] = prev["ips"] + [{"address": f"{missing}/24"}]  # at the very end of 6 MB
    prev["dns"]["search"].append("ünïcode-end.test")
    rc, out = w.call("CHECK", json.dumps({**net, "prevResult": prev, "agentSocket": w.sock}, ensure_ascii=False), c)
    assert rc == 1 and missing in json.loads(out)["msg"], out
    assert w.call("DEL", net, c) == (0, "")


def test_env_socket_and_the_config_socket(host, netns):
    """MUSLIN_AGENT_SOCKET wins over agentSocket; agentSocket under `ipam` counts too."""
    w = host.way("native-agent")
    subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
    c = netns("c")
    conf = {"cniVersion": "1.0.0", "name": "env" + suffix(), "type": "muslin-cni",
            "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": f"{subnet}.0/24"}]], "agentSocket": w.sock}}
    rc, out = w.call("ADD", json.dumps(conf), c)  # only ipam.agentSocket names it; in-process is blocked
    assert rc == 0, out
    wrong = {**conf, "agentSocket": str(host.tmp / "none.sock")}
    assert w.call("DEL", json.dumps(wrong), c, extra_env={"MUSLIN_AGENT_SOCKET": w.sock}) == (0, "")
    assert host.ns.links_after_reap() == ["lo"]

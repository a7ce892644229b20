"""A service whose backends are on two hosts of a cluster network (`muslin lab`, vxlan, real
etcd, one muslind per host): the other host's endpoints come through the cluster store
(control/service_members.py), and new connections through the VIP reach both hosts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest
from labutil import lab_cli, lab_up
from nsutil import tool

from muslin.lab import core

pytestmark = [pytest.mark.kernel, pytest.mark.client, pytest.mark.timeout(600)]

SERVER = r"""
import socket, sys
name = sys.argv[1].encode()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(512)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(name)
    finally:
        c.close()
"""

CLIENT = r"""
import json, os, socket, sys, time
got, errors = {}, []
n, rate = int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0
stop = sys.argv[4] if len(sys.argv) > 4 else ""  # n = 0: until this file exists
t0, i = time.monotonic(), -1
while True:
    i += 1
    if (n and i >= n) or (stop and i % 10 == 0 and os.path.exists(stop)):
        break
    if rate and t0 + i / rate > time.monotonic():
        time.sleep(t0 + i / rate - time.monotonic())
    s = socket.socket(); s.settimeout(10)
    try:
        s.connect((sys.argv[1], 80)); data = b""
        while True:
            chunk = s.recv(64)
            if not chunk:
                break
            data += chunk
        got[data.decode()] = got.get(data.decode(), 0) + 1
    except OSError as e:
        errors.append(type(e).__name__)
    finally:
        s.close()
print(json.dumps({"got": got, "errors": errors}))
"""


@pytest.fixture
def lab(tmp_path):
    with lab_up(tmp_path, "v", "--hosts", "2", "--backend", "vxlan", "--lease-ttl", "4", "--resync", "2") as name:
        yield name


def test_a_service_over_backends_on_two_hosts(lab):
    hosts = core.LabState.load(lab).hosts[:2]
    servers = []
    try:
        names = []
        for i, h in enumerate((hosts[0], hosts[0], hosts[1])):
            sb = f"b{i}"
            r = lab_cli("sandbox", lab, h, sb, "--label", "app=web")
            assert r.returncode == 0, r.stderr
            ns = core.LabState.load(lab).sandboxes[sb]["netns"]
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, sb],
                                 stdout=subprocess.PIPE, text=True)
            servers.append(p)
            assert p.stdout.readline().strip() == "ready"
            names.append(sb)
        r = lab_cli("sandbox", lab, hosts[0], "client")
        assert r.returncode == 0, r.stderr
        st = core.LabState.load(lab)

        def muslin(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([tool("muslin"), "--host-netns", core.ns_host(lab, hosts[0]), "--state-dir",
                                   str(st.host_dir(hosts[0])), *args], capture_output=True, text=True, timeout=120)

        r = muslin("service", "create", "web", "--network", st.network_of(hosts[0]), "--port", "80/tcp",
                   "--selector", "app=web", "-o", "json")
        assert r.returncode == 0, r.stderr
        vip = json.loads(r.stdout)["vip"]
        end = time.monotonic() + 30  # the other host's endpoint arrives through the cluster store
        while time.monotonic() < end:
            svc = json.loads(muslin("service", "inspect", "web", "-o", "json").stdout)
            if svc["endpoints"] == 3:
                break
            time.sleep(0.5)
        assert svc["endpoints"] == 3, svc
        assert {b["host"] for b in svc["backends"]} == {"", hosts[1]}
        client = st.sandboxes["client"]["netns"]
        out = json.loads(subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c", CLIENT, vip, "3000"],
                                        capture_output=True, text=True, timeout=300, check=True).stdout)
        got = Counter(out["got"])
        assert out["errors"] == [], out["errors"][:5]
        assert set(got) == set(names), got
        print("spread over two hosts:", dict(got))
        for b in names:
            assert 0.28 <= got[b] / 3000 <= 0.38, got
        # the remote backend leaves: the service follows
        servers[2].terminate()
        servers[2].wait(10)
        core.remove_sandbox(lab, "b2")
        end = time.monotonic() + 30
        while time.monotonic() < end and json.loads(muslin("service", "inspect", "web", "-o", "json").stdout)[
                "endpoints"] != 2:
            time.sleep(0.5)
        out = json.loads(subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c", CLIENT, vip, "100"],
                                        capture_output=True, text=True, timeout=300, check=True).stdout)
        assert out["errors"] == [] and set(out["got"]) == {"b0", "b1"}, out
        assert muslin("service", "rm", "web").returncode == 0
    finally:
        for p in servers:
            p.terminate()
            p.wait(10)


# Runs in a lab host's namespace: set an endpoint's labels (what `muslin label` does for a CLI sandbox).
RELABEL = r"""
import sys
from muslin.control.service import Muslin
m = Muslin(state_dir=sys.argv[1])
m.set_identity(sys.argv[2], sys.argv[3], set_labels={"app": sys.argv[4]})
"""


def test_a_rolling_replacement_across_two_hosts_fails_no_connection(lab, tmp_path):
    st = core.LabState.load(lab)
    h1, h2 = st.hosts[:2]
    servers: dict[str, subprocess.Popen] = {}

    def relabel(sb: str, app: str) -> None:
        host = core.LabState.load(lab).sandboxes[sb]["host"]
        subprocess.run(["ip", "netns", "exec", core.ns_host(lab, host), sys.executable, "-c", RELABEL,
                        str(st.host_dir(host)), st.network_of(host), sb, app], check=True, timeout=60,
                       capture_output=True)

    def backend(sb: str, host: str) -> None:
        r = lab_cli("sandbox", lab, host, sb, "--label", "app=starting")
        assert r.returncode == 0, r.stderr
        ns = core.LabState.load(lab).sandboxes[sb]["netns"]
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, sb], stdout=subprocess.PIPE,
                             text=True)
        servers[sb] = p
        assert p.stdout.readline().strip() == "ready"

    def muslin(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([tool("muslin"), "--host-netns", core.ns_host(lab, h1), "--state-dir",
                               str(st.host_dir(h1)), *args], capture_output=True, text=True, timeout=120)

    def backends() -> set[str]:
        svc = json.loads(muslin("service", "inspect", "web", "-o", "json").stdout)
        return {b["endpoint"] for b in svc["backends"]}

    def until(want: set[str]) -> None:
        end = time.monotonic() + 30
        while backends() != want and time.monotonic() < end:
            time.sleep(0.2)
        assert backends() == want

    try:
        for sb, host in (("o0", h1), ("o1", h2), ("o2", h2)):
            backend(sb, host)
            relabel(sb, "web")
        r = lab_cli("sandbox", lab, h1, "client")
        assert r.returncode == 0, r.stderr
        r = muslin("service", "create", "web", "--network", st.network_of(h1), "--port", "80/tcp",
                   "--selector", "app=web", "-o", "json")
        assert r.returncode == 0, r.stderr
        vip = json.loads(r.stdout)["vip"]
        live = {"o0", "o1", "o2"}
        until(live)
        stop = tmp_path / "stop"
        client = core.LabState.load(lab).sandboxes["client"]["netns"]
        p = subprocess.Popen(["ip", "netns", "exec", client, sys.executable, "-c", CLIENT, vip, "0", "200", str(stop)],
                             stdout=subprocess.PIPE, text=True)
        for old, new, host in (("o0", "n0", h2), ("o1", "n1", h1), ("o2", "n2", h2)):
            backend(new, host)  # the new one listens,
            relabel(new, "web")  # joins,
            live.add(new)
            until(live)  # (seen by the client's host)
            relabel(old, "retired")  # the old one leaves,
            live.discard(old)
            until(live)
            time.sleep(0.5)  # (the connections it accepted end by themselves)
            servers.pop(old).terminate()
            core.remove_sandbox(lab, old)  # and goes
        time.sleep(1)
        stop.write_text("")
        out = json.loads(p.communicate(timeout=300)[0])
        assert out["errors"] == [], out["errors"][:5]
        assert {"n0", "n1", "n2"} <= set(out["got"]), out["got"]
        print("connections during the replacement:", sum(out["got"].values()), out["got"])
        assert muslin("service", "rm", "web").returncode == 0
    finally:
        for p_ in servers.values():
            p_.terminate()
            p_.wait(10)

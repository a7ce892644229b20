"""A 2-host cluster on etcd served over TLS with client certificates and user/password
authentication (`muslin lab up --tls`: certificates made with openssl), the agents being
muslind with --etcd-ca/--etcd-cert/--etcd-key/--etcd-user/--etcd-password-file: real
packets between sandboxes on the two hosts, and `muslin cluster init|status|hosts|leave`
against that etcd: healthy, then degraded when an agent dies (exit 7, one line), and a
wrong CA, a missing client certificate and a wrong password each one line naming it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nsutil import suffix, tool
from muslin.lab import core, pki

pytestmark = [pytest.mark.kernel, pytest.mark.client]


@pytest.fixture
def tls_lab(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSLIN_LAB_DIR", str(tmp_path / "labs"))
    name = "t" + suffix()
    try:
        r = subprocess.run([tool("muslin"), "lab", "up", name, "--hosts", "2", "--backend", "vxlan", "--tls",
                            "--lease-ttl", "3", "--resync", "2"], capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        assert f"lab {name} is up: 2 hosts, backend vxlan, etcd etcds://" in r.stdout
        yield core.LabState.load(name)
    finally:
        core.down(name)


def cluster(st: core.LabState, *args: str, ns: str = "", opts: list[str] | None = None,
            state_dir: str = "") -> subprocess.CompletedProcess:
    flags = st.etcd_flags() if opts is None else opts
    cmd = [tool("muslin"), "cluster", "--config", "", *args, "--store", st.store_url, *flags]
    if state_dir:
        cmd += ["--state-dir", state_dir]
    return subprocess.run(["ip", "netns", "exec", ns or core.ns_ul(st.name), *cmd], capture_output=True, text=True,
                          timeout=60)


def ping(ns: str, addr: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", addr],
                          capture_output=True).returncode == 0


def test_a_cluster_on_tls_etcd_with_auth(tls_lab, tmp_path):
    st = tls_lab
    assert st.store_url.startswith("etcds://")
    r = subprocess.run([tool("muslin"), "lab", "ls", "--format", "{name} {tls} {etcd_running} {agents_running}"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout == f"{st.name} True True ['h1', 'h2']\n", r.stdout + r.stderr
    a = core.sandbox(st.name, "h1", "a")["address"].split("/")[0]
    b = core.sandbox(st.name, "h2", "b")["address"].split("/")[0]
    assert ping(core.ns_sandbox(st.name, "a"), b) and ping(core.ns_sandbox(st.name, "b"), a)

    r = cluster(st, "status", "-o", "json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    hosts = s["networks"]["net0"]["hosts"]
    assert sorted(hosts) == ["h1", "h2"] and all(h["healthy"] and h["alive"] for h in hosts.values())
    assert hosts["h1"]["peers"] == ["h2"] and hosts["h2"]["peers"] == ["h1"]
    assert 0 < hosts["h1"]["lease_left"] <= st.settings["subnet_ttl"]
    assert [m["ok"] for m in s["store"]] == [True]
    r = cluster(st, "hosts", "--network", "net0", "-q")
    assert (r.returncode, r.stdout) == (0, "h1\nh2\n"), r.stderr
    r = cluster(st, "hosts", "--network", "net0", "--format", "{name} {subnet}")
    assert r.stdout.splitlines() == [f"{h} {hosts[h]['subnet']}" for h in ("h1", "h2")]

    # the README's init, on the same TLS etcd: a second cluster network, then the same again
    for _ in range(2):
        r = cluster(st, "init", "--network", "other", "--cidr", "10.245.0.0/16", "--backend", "vxlan", "--vni", "7")
        assert r.returncode == 0 and r.stdout.startswith("cluster network other: vxlan, 10.245.0.0/16"), r.stderr
    r = cluster(st, "init", "--network", "other", "--cidr", "10.246.0.0/16")
    assert (r.returncode, r.stderr) == (4, "error: cluster network 'other' already exists with another config "
                                           "(cidr 10.245.0.0/16 -> 10.246.0.0/16, vni 7 -> 1); a cluster network's "
                                           "config does not change once stored (make a new network)\n")

    # each misconfiguration: one line naming it, exit 2
    o = st.etcd_options()
    other = pki.self_signed(tmp_path, "stranger", "/CN=stranger")[0]
    pw = tmp_path / "wrong"
    pw.write_text("not-the-password")
    base = ["--etcd-user", o.user, "--etcd-password-file", str(Path(st.pki_dir) / "password")]
    cert = ["--etcd-cert", o.cert, "--etcd-key", o.key]
    for flags, want in [
        (["--etcd-ca", other, *cert, *base], f"its TLS certificate is not trusted by the CA in {other}"),
        (["--etcd-ca", o.ca, *base], "requires a client certificate, and none was given"),
        (["--etcd-ca", o.ca, *cert, "--etcd-user", o.user, "--etcd-password-file", str(pw)],
         "refused user 'muslin': authentication failed, invalid user ID or password"),
    ]:
        r = cluster(st, "status", opts=flags)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, (flags, r.stderr)
        assert r.stderr.startswith("error: etcd at 10.250.0.254:2379") and want in r.stderr, r.stderr

    # an agent dies: its host stays routed, status says degraded (the liveness key is gone)
    core.kill_agent(st.name, "h2")
    end = time.monotonic() + 30
    while True:
        r = cluster(st, "status", "--network", "net0", ns=core.ns_host(st.name, "h1"),
                    state_dir=str(st.host_dir("h1")))
        if r.returncode == 7 or time.monotonic() > end:
            break
        time.sleep(0.5)
    assert r.returncode == 7, (r.stdout, r.stderr)
    assert r.stderr == ("error: cluster network net0 is degraded: h2 (no liveness key: its agent is not running "
                        "(it stays routed while its subnet lease lasts))\n")
    assert "h2    degraded" in r.stdout and "h1    ok" in r.stdout
    assert ping(core.ns_sandbox(st.name, "a"), b)

    # h1 leaves through its running agent (muslind): the other host drops it
    r = cluster(st, "leave", "--network", "net0", "--hostname", "h1", ns=core.ns_host(st.name, "h1"),
                state_dir=str(st.host_dir("h1")))
    assert r.returncode == 0 and "left net0" in r.stdout, r.stderr
    r = cluster(st, "hosts", "--network", "net0", "-q")
    assert r.stdout == "h2\n", r.stdout

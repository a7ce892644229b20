"""Multi-host: 3-host labs (real etcd, one agent process per host namespace) for every
backend, with real packets between sandboxes on different hosts; robustness of the agent
(leave, kill -9 with the host's routes kept past the liveness TTL, subnet lease expiry,
etcd restart, drift, restart during a TCP stream)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from labutil import lab_cli
from nsutil import suffix, wait_until
from muslin.lab import core

pytestmark = [pytest.mark.kernel, pytest.mark.client]

TTL = 4
RESYNC = 2.0

TCP = r"""
import hashlib, socket, sys, time
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "serve":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(1); print("ready", flush=True)
    c, _ = s.accept(); h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(65536)
        if not b: break
        h.update(b); n += len(b)
    c.sendall(f"{n} {h.hexdigest()}".encode()); c.close()
else:
    total, seconds = int(sys.argv[4]), float(sys.argv[5])
    c = socket.create_connection((addr, port), timeout=10); h = hashlib.sha256(); sent = 0
    chunk = bytes(range(256)) * 256
    start = time.monotonic()
    while sent < total:
        b = chunk[: min(len(chunk), total - sent)]
        c.sendall(b); h.update(b); sent += len(b)
        if seconds:
            ahead = start + seconds * sent / total - time.monotonic()
            if ahead > 0: time.sleep(ahead)
    c.shutdown(socket.SHUT_WR)
    reply = c.recv(200).decode()
    print("ok" if reply == f"{sent} {h.hexdigest()}" else f"MISMATCH {reply}", flush=True)
"""


STREAM = r"""
import hashlib, json, socket, sys, time
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "serve":  # count bytes, hash them, and note the longest pause between two reads
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(1); print("ready", flush=True)
    c, _ = s.accept(); h = hashlib.sha256(); n = 0; gap = 0.0; last = None
    while True:
        b = c.recv(65536); now = time.monotonic()
        if not b: break
        if last is not None: gap = max(gap, now - last)
        last = now; h.update(b); n += len(b)
    c.sendall(json.dumps({"bytes": n, "sha256": h.hexdigest(), "max_gap": round(gap, 3)}).encode()); c.close()
else:  # 4 KiB every 10 ms for the given seconds
    seconds = float(sys.argv[4])
    c = socket.create_connection((addr, port), timeout=10); h = hashlib.sha256(); sent = 0
    chunk = bytes(range(256)) * 16
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c.sendall(chunk); h.update(chunk); sent += len(chunk); time.sleep(0.01)
    c.shutdown(socket.SHUT_WR)
    reply = json.loads(c.makefile().read())
    print(json.dumps({**reply, "sent": sent, "sent_sha256": h.hexdigest()}), flush=True)
"""


def ns_run(ns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


def ip(addr: str) -> str:
    return addr.split("/")[0]


def ping(ns: str, dst: str, size: int | None = None, count: int = 1) -> bool:
    args = ["ping", "-c", str(count), "-W", "1", "-i", "0.2"]
    if size is not None:
        args += ["-s", str(size), "-M", "do"]
    return ns_run(ns, *args, dst).returncode == 0


def routes(ns: str) -> str:
    return subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True).stdout


def fdb(ns: str) -> str:
    return subprocess.run(["bridge", "-n", ns, "fdb", "show"], capture_output=True, text=True).stdout


def neigh(ns: str) -> str:
    """Permanent neighbour entries (the agent's; dynamic ones change state by themselves)."""
    return subprocess.run(["ip", "-n", ns, "neigh", "show", "nud", "permanent"], capture_output=True,
                          text=True).stdout


def lines(*cmd: str) -> list[str]:
    return sorted(subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines())


def kernel(ns: str, backend: str) -> dict[str, list[str]]:
    """What a host's kernel holds that an agent could change: every IPv4 route (the agent
    manages no IPv6; link-local v6 routes appear by themselves after DAD), the permanent
    FDB and neighbour entries, every link, and the VXLAN device in detail."""
    out = {"routes": lines("ip", "-4", "-n", ns, "route", "show", "table", "all"),
           "fdb": sorted(ln for ln in fdb(ns).splitlines() if "permanent" in ln),
           "neigh": sorted(neigh(ns).splitlines()),
           "links": lines("ip", "-n", ns, "-o", "link", "show")}
    if backend == "vxlan":
        out["vxlan"] = lines("ip", "-n", ns, "-d", "link", "show", "dev", "mx-net0")
    return out


class Lab:
    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def st(self) -> core.LabState:
        return core.LabState.load(self.name)

    def sandbox(self, host: str, sb: str) -> str:
        r = lab_cli("sandbox", self.name, host, sb)
        assert r.returncode == 0, r.stderr
        return ip(r.stdout.strip())

    def ns(self, sb: str) -> str:
        return self.st.sandboxes[sb]["netns"]

    def addr(self, sb: str) -> str:
        return ip(self.st.sandboxes[sb]["address"])

    def host_ns(self, host: str) -> str:
        return core.ns_host(self.name, host)

    def subnet(self, host: str) -> str:
        return core.host_status(self.st, host)["subnet"]

    def underlay(self, host: str) -> str:
        return f"10.250.0.{host[1:]}"

    def forgot(self, host: str, peer: str, subnet: str) -> bool:
        """host has no route (and, for vxlan, no FDB entry) left for peer."""
        ns = self.host_ns(host)
        return subnet not in routes(ns) and f"dst {self.underlay(peer)} " not in fdb(ns)

    def log(self, host: str) -> str:
        return (self.st.dir / f"{host}.log").read_text()

    def entries_for(self, host: str, peer: str, subnet: str) -> frozenset[str]:
        """host's route to peer's subnet, its FDB entries towards peer and its neighbour
        entry for peer's VTEP (vxlan)."""
        ns = self.host_ns(host)
        vtep = subnet.split("/")[0]
        return frozenset([ln for ln in routes(ns).splitlines() if ln.startswith(subnet + " ")]
                         + [ln for ln in fdb(ns).splitlines() if f"dst {self.underlay(peer)} " in ln]
                         + [ln for ln in neigh(ns).splitlines() if ln.startswith(vtep + " ")])

    def stream(self, src: str, dst: str, seconds: float, port: int = 5002):
        """A steady TCP stream src -> dst (about 400 KB/s); .result() waits for the counts."""
        srv = subprocess.Popen(["ip", "netns", "exec", self.ns(dst), sys.executable, "-c", STREAM, "serve",
                                self.addr(dst), str(port)], stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
        cli = subprocess.Popen(["ip", "netns", "exec", self.ns(src), sys.executable, "-c", STREAM, "send",
                                self.addr(dst), str(port), str(seconds)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        class Stream:
            @staticmethod
            def result() -> dict:
                try:
                    out, err = cli.communicate(timeout=seconds + 30)
                    return json.loads(out) if cli.returncode == 0 else {"error": err.strip()[-300:]}
                finally:
                    for p in (cli, srv):
                        if p.poll() is None:
                            p.kill()
                        p.wait()
        return Stream

    def tcp(self, src: str, dst: str, total: int, seconds: float = 0.0, port: int = 5001,
            during=None) -> str:
        srv = subprocess.Popen(["ip", "netns", "exec", self.ns(dst), sys.executable, "-c", TCP, "serve",
                                self.addr(dst), str(port)], stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout.readline().strip() == "ready"
            cli = subprocess.Popen(["ip", "netns", "exec", self.ns(src), sys.executable, "-c", TCP, "send",
                                    self.addr(dst), str(port), str(total), str(seconds)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if during:
                during()
            out, err = cli.communicate(timeout=60)
            return out.strip() or err.strip()
        finally:
            srv.kill()
            srv.wait()


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("labs")
    old = os.environ.get("MUSLIN_LAB_DIR")
    os.environ["MUSLIN_LAB_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("MUSLIN_LAB_DIR", None)
    else:
        os.environ["MUSLIN_LAB_DIR"] = old


def _up(name: str, backend: str, hosts: int = 3, *extra: str, ttl: int = TTL) -> None:
    r = lab_cli("up", name, "--hosts", str(hosts), "--backend", backend, "--lease-ttl", str(ttl),
                "--resync", str(RESYNC), *extra)
    assert r.returncode == 0, r.stderr + r.stdout


@pytest.fixture(scope="module", params=["vxlan", "host-gw", "bgp"])
def lab3(request, lab_dir):
    name = "t" + suffix()
    try:
        _up(name, request.param)
        lab = Lab(name)
        lab.backend = request.param
        for h, sb in (("h1", "a"), ("h2", "b"), ("h3", "c")):
            lab.sandbox(h, sb)
        assert wait_until(lambda: ping(lab.ns("a"), lab.addr("b")) and ping(lab.ns("a"), lab.addr("c"))
                          and ping(lab.ns("b"), lab.addr("c")), 20)
        yield lab
    finally:
        core.down(name)
        assert not [n for n in core.netns_list() if n.startswith(f"mlab-{name}-")]


# -- every backend -------------------------------------------------------------------------

def test_cross_host_ping_and_tcp(lab3):
    assert ping(lab3.ns("a"), lab3.addr("b"), count=3)
    assert ping(lab3.ns("c"), lab3.addr("a"), count=3)
    assert lab3.tcp("a", "c", 200_000) == "ok"
    r = lab_cli("exec", lab3.name, "b", "--", "ping", "-c", "1", "-W", "2", lab3.addr("c"))
    assert r.returncode == 0 and "1 received" in r.stdout
    s = json.loads(lab_cli("status", lab3.name, "-o", "json").stdout)
    assert s["etcd"]["healthy"] and all(h["healthy"] for h in s["hosts"].values())
    assert sorted(h["subnet"] for h in s["hosts"].values()) == sorted(lab3.subnet(h) for h in ("h1", "h2", "h3"))


def test_mtu_large_ping_with_df_and_multi_megabyte_transfer(lab3):
    assert ping(lab3.ns("a"), lab3.addr("b"), size=1400)
    assert lab3.tcp("b", "a", 8 * 1024 * 1024) == "ok"
    mtu = ns_run(lab3.ns("a"), "cat", "/sys/class/net/eth0/mtu").stdout.strip()
    if lab3.backend == "vxlan":
        assert mtu == "1450"
        assert ping(lab3.ns("a"), lab3.addr("b"), size=1422)
        assert not ping(lab3.ns("a"), lab3.addr("b"), size=1423)  # refused locally, never black-holed
    else:
        assert mtu == "1500"
        assert ping(lab3.ns("a"), lab3.addr("b"), size=1472)


def test_drift_is_repaired_within_resync(lab3):
    h1 = lab3.host_ns("h1")
    sub2 = lab3.subnet("h2")
    subprocess.run(["ip", "-n", h1, "route", "del", sub2], check=True)
    if lab3.backend == "vxlan":
        subprocess.run(["bridge", "-n", h1, "fdb", "del", "00:00:00:00:00:00", "dev", "mx-net0",
                        "dst", lab3.underlay("h2")], check=True)
    assert not ping(lab3.ns("a"), lab3.addr("b"))
    t0 = time.monotonic()
    assert wait_until(lambda: sub2 in routes(h1), RESYNC * 2 + 3)
    assert time.monotonic() - t0 <= RESYNC * 2 + 3
    if lab3.backend == "vxlan":
        assert wait_until(lambda: any(ln.startswith("00:00:00:00:00:00 ") and f"dst {lab3.underlay('h2')} " in ln
                                      for ln in fdb(h1).splitlines()), 3)
    assert wait_until(lambda: ping(lab3.ns("a"), lab3.addr("b")), 5)


def test_kill9_agents_during_stream_keeps_flowing_and_changes_nothing(lab3):
    st = lab3.st
    before = {h: routes(lab3.host_ns(h)) for h in ("h1", "h2")}
    fdbs = {h: fdb(lab3.host_ns(h)) for h in ("h1", "h2")}
    marks = {h: len(lab3.log(h)) for h in ("h1", "h2")}

    def chaos():
        time.sleep(0.8)
        for h in ("h1", "h2"):
            core.kill_pid(st.pids[f"agent-{h}"], signal.SIGKILL)
        time.sleep(0.5)
        for h in ("h1", "h2"):
            core.start_agent(core.LabState.load(lab3.name), h)

    assert lab3.tcp("a", "b", 3 * 1024 * 1024, seconds=4, during=chaos) == "ok"
    core.wait_converged(lab3.st, 20)
    time.sleep(RESYNC + 0.5)  # one resync too
    for h in ("h1", "h2"):
        new = lab3.log(h)[marks[h]:]
        assert "kept" in new and "reconciled" not in new and "reconfigured" not in new, new
        assert routes(lab3.host_ns(h)) == before[h]
        assert sorted(fdb(lab3.host_ns(h)).splitlines()) == sorted(fdbs[h].splitlines())


def test_etcd_restart_agents_reconnect_and_converge(lab3):
    st = lab3.st
    core.kill_pid(st.pids["etcd"], signal.SIGKILL)
    time.sleep(1.5)
    assert ping(lab3.ns("a"), lab3.addr("c"))  # the data plane does not need etcd
    core.start_etcd(st)
    core.wait_etcd(st)
    # a change after the restart reaches every agent: h3 leaves
    sub3 = lab3.subnet("h3")
    r = ns_run(lab3.host_ns("h3"), sys.executable, "-m", "muslin.control.agent", "leave", "--store", st.store_url,
               "--network", "net0", "--state-dir", str(st.host_dir("h3")))
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: lab3.forgot("h1", "h3", sub3) and lab3.forgot("h2", "h3", sub3), 20)
    assert not ping(lab3.ns("a"), lab3.addr("c"))
    # h3 comes back with the same subnet; its sandbox is attached again
    core.start_agent(core.LabState.load(lab3.name), "h3")
    core.wait_converged(lab3.st, 20)
    assert lab3.subnet("h3") == sub3
    core.remove_sandbox(lab3.name, "c")
    lab3.sandbox("h3", "c")
    assert wait_until(lambda: ping(lab3.ns("a"), lab3.addr("c")), 20)
    s = json.loads(lab_cli("status", lab3.name, "-o", "json").stdout)
    assert all(h["store_ok"] for h in s["hosts"].values())


def test_kill9_agent_keeps_routes_and_traffic_past_the_liveness_ttl_and_restart_changes_nothing(lab3):
    """kill -9 of h2's agent: a TCP stream from a (h1) to b (h2) keeps flowing for 3x the
    liveness TTL (the old single lease's TTL, after which peers used to drop h2) with no
    pause over 1 s; h1's and h3's entries for h2 never change; `lab status` says h2 is
    degraded (exit 7); a restarted agent changes nothing in any host's kernel."""
    hosts = ("h1", "h2", "h3")
    name, sub2 = lab3.name, lab3.subnet("h2")
    before = {h: kernel(lab3.host_ns(h), lab3.backend) for h in hosts}
    theirs = {h: lab3.entries_for(h, "h2", sub2) for h in ("h1", "h3")}
    assert all(theirs.values()), theirs
    if lab3.backend == "vxlan":  # route, 2 FDB entries, the VTEP neighbour
        assert all(len(v) == 4 for v in theirs.values()), theirs
    marks = {h: len(lab3.log(h)) for h in hosts}
    window = 3 * TTL
    stream = lab3.stream("a", "b", seconds=window + 2.5)
    time.sleep(1.0)
    assert core.kill_agent(name, "h2", signal.SIGKILL)
    t_kill = time.monotonic()
    changed, status = [], None
    while time.monotonic() < t_kill + window:
        for h in ("h1", "h3"):
            got = lab3.entries_for(h, "h2", sub2)
            if got != theirs[h]:
                changed.append((round(time.monotonic() - t_kill, 1), h, sorted(got)))
        if status is None and time.monotonic() > t_kill + TTL + 0.5:
            r = lab_cli("status", name, "-o", "json")
            s = json.loads(r.stdout)
            if not s["hosts"]["h2"]["alive"]:  # the liveness key has expired
                status = (r, s)
        time.sleep(0.3)
    res = stream.result()
    print(f"{lab3.backend}: stream during kill -9 of h2's agent: {res}")
    assert not changed, changed
    assert "error" not in res, res
    assert res["bytes"] == res["sent"] and res["sha256"] == res["sent_sha256"], res
    assert res["max_gap"] < 1.0 and res["sent"] > 1_000_000, res
    assert status is not None, "h2's liveness key never expired"
    r, s = status
    h2 = s["hosts"]["h2"]
    assert r.returncode == 7 and r.stderr.strip().startswith(f"error: lab {name} is degraded: h2 ("), r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert not h2["healthy"] and not h2["agent_alive"] and h2["leased"] and h2["subnet"] == sub2
    assert {"agent not running", "no liveness key in etcd"} <= set(h2["reasons"]), h2
    assert s["hosts"]["h1"]["healthy"] and s["hosts"]["h3"]["healthy"], s["hosts"]
    for h in ("h1", "h3"):
        assert "reconciled" not in lab3.log(h)[marks[h]:]
    # restart: the agent finds its lease and record, and changes nothing anywhere
    r = lab_cli("restart-agent", name, "h2")
    assert r.returncode == 0, r.stderr
    time.sleep(RESYNC + 0.5)  # one resync too
    after = {h: kernel(lab3.host_ns(h), lab3.backend) for h in hosts}
    assert after == before, [(h, k, sorted(set(before[h][k]) ^ set(after[h][k])))
                             for h in hosts for k in before[h] if before[h][k] != after[h][k]]
    new = lab3.log("h2")[marks["h2"]:]
    assert f"kept {sub2}" in new and "leased" not in new and "reconciled" not in new, new
    for h in ("h1", "h3"):
        assert "reconciled" not in lab3.log(h)[marks[h]:]
    assert wait_until(lambda: lab_cli("status", name).returncode == 0, 5)
    assert ping(lab3.ns("a"), lab3.addr("b"))


def test_expired_subnet_lease_removes_a_dead_host_and_a_leave_removes_one_at_once(lab_dir):
    """With a short subnet lease (8 s; liveness 2 s): a host whose agent was killed stays
    routed after its liveness key expires and is removed by its peers when its subnet lease
    expires; a host that leaves (SIGUSR1) is removed at once; the dead host returns with
    its subnet."""
    name = "t" + suffix()
    try:
        _up(name, "vxlan", 3, "--subnet-ttl", "8", ttl=2)
        lab = Lab(name)
        lab.sandbox("h1", "a")
        lab.sandbox("h2", "b")
        assert wait_until(lambda: ping(lab.ns("a"), lab.addr("b")), 10)
        sub2, sub3 = lab.subnet("h2"), lab.subnet("h3")
        core.kill_agent(name, "h2", signal.SIGKILL)
        t0 = time.monotonic()
        assert wait_until(lambda: "h2" not in core.store_alive(lab.st), 5, 0.1)
        assert "h2" in core.store_hosts(lab.st)  # dead, but its subnet lease holds
        assert all(len(lab.entries_for(h, "h2", sub2)) == 4 for h in ("h1", "h3"))
        assert ping(lab.ns("a"), lab.addr("b"))
        assert wait_until(lambda: "h2" not in core.store_hosts(lab.st), 12, 0.1)
        assert time.monotonic() - t0 > 4  # the subnet lease, not the liveness one
        assert wait_until(lambda: not lab.entries_for("h1", "h2", sub2) and not lab.entries_for("h3", "h2", sub2), 5)
        assert not ping(lab.ns("a"), lab.addr("b"))
        # a real leave: SIGUSR1 to h3's agent gives everything back, peers drop it at once
        t1 = time.monotonic()
        r = lab_cli("kill-agent", name, "h3", "--signal", "USR1")
        assert r.returncode == 0, r.stderr
        assert "h3" not in core.store_hosts(lab.st) and "h3" not in core.store_alive(lab.st)
        assert wait_until(lambda: not lab.entries_for("h1", "h3", sub3), 3)
        assert time.monotonic() - t1 < 8
        links = ns_run(lab.host_ns("h3"), "ip", "-o", "link").stdout
        assert "mx-net0" not in links and "mus-net0" not in links
        # the killed host comes back with its subnet, and traffic with it
        core.restart_agent(name, "h2")
        assert lab.subnet("h2") == sub2
        assert wait_until(lambda: ping(lab.ns("a"), lab.addr("b")), 15)
    finally:
        core.down(name)


# -- vxlan specifics, bad input, teardown ----------------------------------------------------

def test_two_overlays_with_the_same_subnet_stay_isolated(lab_dir):
    name = "t" + suffix()
    try:
        _up(name, "vxlan", 2)
        core.add_network(name, "net1", "vxlan", vni=2)
        def br0_mac() -> str:
            return ns_run(core.ns_ul(name), "cat", "/sys/class/net/br0/address").stdout.strip()

        assert br0_mac() == core.underlay_mac(name)
        for _ in range(2):
            core.add_host(name, "net1")
        assert br0_mac() == core.underlay_mac(name)  # fixed at creation: hosts joining do not change it
        lab = Lab(name)
        core.wait_converged(lab.st, 20)
        # h1 and h2 joined together (the loser of the race takes a spread subnet), h3 joined net1
        # alone: both overlays hold the first free /24, so the same addresses exist on both
        assert {lab.subnet("h1"), lab.subnet("h2")} & {lab.subnet("h3"), lab.subnet("h4")}
        for h, sb in (("h1", "a"), ("h2", "b"), ("h3", "c"), ("h4", "d")):
            lab.sandbox(h, sb)
        assert wait_until(lambda: ping(lab.ns("a"), lab.addr("b")) and ping(lab.ns("c"), lab.addr("d")), 15)
        assert ns_run(lab.host_ns("h3"), "ip", "-d", "link", "show", "mx-net1").stdout.count("vxlan id 2") == 1

        def rx(host: str, dev: str) -> int:
            return int(ns_run(lab.host_ns(host), "cat", f"/sys/class/net/{dev}/statistics/rx_bytes").stdout)

        base = {h: rx(h, "mx-net1") for h in ("h3", "h4")}
        assert lab.tcp("a", "b", 1_000_000) == "ok"
        assert ping(lab.ns("a"), lab.addr("b"), count=5)
        # net0's megabyte never reached net1's VXLAN devices (a few of net1's own
        # neighbour-discovery packets may arrive meanwhile), and net1's own traffic works
        assert all(rx(h, "mx-net1") - base[h] < 10_000 for h in ("h3", "h4"))
        assert rx("h2", "mx-net0") > 1_000_000
        assert lab.tcp("c", "d", 1_000_000) == "ok"
        # the same addresses exist on both overlays, each answers only inside its own
        sbs = lab.st.sandboxes
        same = {ip(sbs[x]["address"]) for x in ("a", "b")} & {ip(sbs[x]["address"]) for x in ("c", "d")}
        assert same
    finally:
        core.down(name)


def test_bgp_with_a_route_reflector(lab_dir):
    name = "t" + suffix()
    try:
        _up(name, "bgp", 3, "--route-reflector", "h1")
        lab = Lab(name)
        lab.sandbox("h2", "b")
        lab.sandbox("h3", "c")
        # h2 and h3 have no session with each other: their routes come through h1
        conf = (lab.st.host_dir("h2") / "cluster" / "net0.bird.conf").read_text()
        assert "neighbor 10.250.0.1 " in conf and "neighbor 10.250.0.3 " not in conf
        assert wait_until(lambda: ping(lab.ns("b"), lab.addr("c")), 20)
        assert f"{lab.subnet('h3')} via 10.250.0.3 " in routes(lab.host_ns("h2"))
    finally:
        core.down(name)


def test_sigterm_keeps_everything_sigterm_with_leave_gives_it_back(lab_dir):
    name = "t" + suffix()
    try:
        _up(name, "host-gw", 2)
        lab = Lab(name)
        lab.sandbox("h1", "a")
        lab.sandbox("h2", "b")
        sub2 = lab.subnet("h2")
        core.kill_pid(lab.st.pids["agent-h2"], signal.SIGTERM)
        assert "h2" in core.store_hosts(lab.st) and sub2 in routes(lab.host_ns("h1"))
        assert ping(lab.ns("a"), lab.addr("b"))  # a stopped agent leaves traffic alone
        core.start_agent(lab.st, "h2", ("--leave",))
        core.wait_converged(lab.st, 20)
        t0 = time.monotonic()
        core.kill_pid(lab.st.pids["agent-h2"], signal.SIGTERM)
        assert "h2" not in core.store_hosts(lab.st)
        assert wait_until(lambda: sub2 not in routes(lab.host_ns("h1")), 5)
        assert time.monotonic() - t0 < TTL  # given back, not expired
        assert "mus-net0" not in ns_run(lab.host_ns("h2"), "ip", "-o", "link").stdout
    finally:
        core.down(name)


def test_host_beyond_the_cidr_is_exhausted_and_makes_nothing(lab_dir):
    name = "t" + suffix()
    try:
        _up(name, "vxlan", 2, "--cidr", "10.244.0.0/23")
        h3 = core.add_host(name)
        lab = Lab(name)
        pid = lab.st.pids[f"agent-{h3}"]
        assert wait_until(lambda: not core._alive(pid), 15)
        errors = [ln for ln in lab.log(h3).splitlines() if "error" in ln.lower() or "Traceback" in ln]
        assert errors == ["error: cluster network net0: no free /24 left in 10.244.0.0/23 for host h3 (2 hosts hold one)"]
        assert len(ns_run(lab.host_ns(h3), "ip", "-o", "link").stdout.splitlines()) == 2  # lo, eth0
        assert sorted(core.store_hosts(lab.st)) == ["h1", "h2"]
    finally:
        core.down(name)


def test_bad_input_one_line_and_nothing_made(lab_dir):
    name = "t" + suffix()
    r = lab_cli("up", name, "--hosts", "3", "--cidr", "10.244.0.0/23", "--host-prefix", "24")
    assert r.returncode == 5 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: cluster CIDR 10.244.0.0/23 holds only 2 /24 host subnets")
    r = lab_cli("up", name, "--hosts", "2", "--backend", "geneve")
    assert r.returncode == 2 and r.stderr.strip() == \
        "error: unknown backend 'geneve': expected one of vxlan, host-gw, bgp, wireguard"
    r = lab_cli("up", name, "--hosts", "2", "--lease-ttl", "10", "--subnet-ttl", "3")
    assert r.returncode == 2 and r.stderr.strip() == \
        "error: subnet lease TTL 3 must be at least the liveness lease TTL 10"
    r = lab_cli("status", name)
    assert r.returncode == 3 and "does not exist" in r.stderr
    assert not [n for n in core.netns_list() if n.startswith(f"mlab-{name}-")]
    assert not (lab_dir / f"{name}.json").exists()
    r = subprocess.run([sys.executable, "-m", "muslin.control.agent", "init", "--store", "etcd://127.0.0.1:1",
                        "--network", "x", "--backend", "vxlan"], capture_output=True, text=True)
    assert r.returncode == 7 and r.stderr.strip() == "error: etcd at 127.0.0.1:1 is unreachable: connection refused"


def test_agent_with_etcd_unreachable_retries_and_makes_nothing(netns, tmp_path):
    host = netns("host")
    host.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    host.run("ip", "addr", "add", "10.250.0.1/24", "dev", "eth0")
    host.run("ip", "link", "set", "eth0", "up")
    links = host.links()
    p = host.popen(sys.executable, "-m", "muslin.control.agent", "run", "--store", "etcd://127.0.0.1:1",
                   "--network", "n", "--hostname", "h", "--state-dir", str(tmp_path / "s"),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)
        assert p.poll() is None  # still trying
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "etcd at 127.0.0.1:1 is unreachable: connection refused; retrying" in lines[0], err
    assert host.links() == links


def test_down_is_idempotent_and_works_after_a_crash(lab_dir):
    name = "t" + suffix()
    _up(name, "host-gw", 2)
    st = core.LabState.load(name)
    for pid in st.pids.values():  # crash: every process dies, the state file is lost
        core.kill_pid(pid, signal.SIGKILL)
    (lab_dir / f"{name}.json").unlink()
    r = lab_cli("down", name)
    assert r.returncode == 0, r.stderr
    assert not [n for n in core.netns_list() if n.startswith(f"mlab-{name}-")]
    assert lab_cli("down", name).returncode == 0



def test_muslin_cni_on_two_hosts_allocates_from_each_hosts_subnet(lab3, netns):
    """CNI on many hosts: `muslin-cni` run on a host, joining the cluster network by name,
    takes an address from that host's leased subnet; the pods reach each other across hosts."""
    import ipaddress

    from nsutil import tool

    st = lab3.st
    pods = {h: (netns(f"pod{h}"), f"pod{h}{suffix()}") for h in ("h1", "h2")}

    def cni(host: str, command: str) -> subprocess.CompletedProcess:
        pod, cid = pods[host]
        conf = json.dumps({"cniVersion": "1.0.0", "name": st.network, "type": "muslin-cni",
                           "network": st.network, "dataDir": str(st.host_dir(host))})
        env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"CNI_COMMAND={command}",
               f"CNI_CONTAINERID={cid}", "CNI_IFNAME=eth0", f"CNI_NETNS={pod.path}", "CNI_PATH=/usr/lib/cni",
               "MUSLIN_AGENT_SOCKET=/nonexistent.sock"]
        return subprocess.run(["ip", "netns", "exec", lab3.host_ns(host), *env, tool("muslin-cni")], input=conf,
                              capture_output=True, text=True, timeout=60)

    try:
        addrs = {}
        for host in pods:
            r = cni(host, "ADD")
            assert r.returncode == 0, r.stdout + r.stderr
            addrs[host] = ipaddress.ip_interface(json.loads(r.stdout)["ips"][0]["address"])
            assert addrs[host].ip in ipaddress.ip_network(lab3.subnet(host)), (addrs[host], lab3.subnet(host))
        assert wait_until(lambda: pods["h1"][0].ping(str(addrs["h2"].ip)), 10)
        assert pods["h2"][0].ping(lab3.addr("c"))  # and a lab sandbox on a third host
    finally:
        for host in pods:
            r = cni(host, "DEL")
            assert r.returncode == 0, r.stdout + r.stderr

"""The wireguard backend in a 3-host lab (real etcd, one agent per host, wireguard-go on
TUN since this kernel has no WireGuard module): real traffic between sandboxes on
different hosts, nothing in the clear on the underlay (tcpdump in the underlay
namespace), `wg show`, kill -9 of the agent and of wireguard-go, strict mode, key rotation,
a host leaving, and a host that cannot run WireGuard."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from nsutil import suffix
from muslin.dataplane import wireguard as wgmod
from muslin.lab import core
from muslin.model.errors import Unsupported
from test_lab import RESYNC, TTL, Lab, lab_cli, lab_dir, ns_run, ping, routes, wait_until  # noqa: F401

pytestmark = [pytest.mark.kernel, pytest.mark.client]

try:
    IMPL = wgmod.probe()
    NO_WG = ""
except Unsupported as e:
    IMPL, NO_WG = "", str(e)

# A steady TCP stream whose every byte is a marker text: the receiver counts and hashes
# what it gets and notes the longest pause between two reads.
MARKED = r"""
import hashlib, json, socket, sys, time
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "serve":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(1); print("ready", flush=True)
    c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0; gap = 0.0; last = None
    while True:
        b = c.recv(65536); now = time.monotonic()
        if not b: break
        if last is not None: gap = max(gap, now - last)
        last = now; h.update(b); n += len(b)
    c.sendall(json.dumps({"bytes": n, "sha256": h.hexdigest(), "max_gap": round(gap, 3)}).encode()); c.close()
else:
    marker, seconds = sys.argv[4].encode(), float(sys.argv[5])
    c = socket.create_connection((addr, port), timeout=60); h = hashlib.sha256(); sent = 0
    chunk = (marker * (4096 // len(marker) + 1))[:4096]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c.sendall(chunk); h.update(chunk); sent += len(chunk); time.sleep(0.01)
    c.shutdown(socket.SHUT_WR)
    reply = json.loads(c.makefile().read())
    print(json.dumps({**reply, "sent": sent, "sent_sha256": h.hexdigest()}), flush=True)
"""

INTER_HOST = "ip and src net 10.250.0.0/24 and dst net 10.250.0.0/24 and not host 10.250.0.254"


class WgLab(Lab):
    def ifname(self, host: str) -> str:
        return core.host_status(self.st, host)["companions"]["wireguard"]["ifname"]

    def dump(self, host: str) -> wgmod.Shown:
        r = ns_run(self.host_ns(host), "wg", "show", self.ifname(host), "dump")
        assert r.returncode == 0, r.stderr
        return wgmod.parse_dump(self.ifname(host), r.stdout)

    def wg_pid(self, host: str, name: str = "") -> int:
        """The wireguard-go of a host (found by its interface, in the host's namespace)."""
        name = name or self.ifname(host)
        pids = subprocess.run(["ip", "netns", "pids", self.host_ns(host)], capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if os.path.basename(argv[0]) == b"wireguard-go" and name.encode() in argv[1:]:
                return int(pid)
        return 0

    def key(self, host: str) -> str:
        return core.store_hosts(self.st)[host]["published"]["public_key"]

    def marked(self, src: str, dst: str, marker: str, seconds: float, port: int = 5101):
        srv = subprocess.Popen(["ip", "netns", "exec", self.ns(dst), sys.executable, "-c", MARKED, "serve",
                                self.addr(dst), str(port)], stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
        cli = subprocess.Popen(["ip", "netns", "exec", self.ns(src), sys.executable, "-c", MARKED, "send",
                                self.addr(dst), str(port), marker, str(seconds)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        class Stream:
            @staticmethod
            def result() -> dict:
                try:
                    out, err = cli.communicate(timeout=seconds + 90)
                    return json.loads(out) if cli.returncode == 0 else {"error": err.strip()[-300:]}
                finally:
                    for p in (cli, srv):
                        if p.poll() is None:
                            p.kill()
                        p.wait()
        return Stream

    @contextmanager
    def capture(self, tmp: Path):
        """tcpdump on every interface of the underlay namespace (the bridge's ports see
        the hosts' packets); yields the pcap path. At the end a sentinel datagram goes out
        from the underlay to h1 and the capture stops only once the file holds it, so it
        has read every packet sent before (a busy tcpdump lags behind the kernel)."""
        pcap = tmp / f"ul-{suffix()}.pcap"
        ul = core.ns_ul(self.name)
        p = subprocess.Popen(["ip", "netns", "exec", ul, "tcpdump", "-i", "any", "-n", "-U", "-s", "0", "-w",
                              str(pcap)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            line = ""
            for _ in range(5):  # a warning may come first
                line = p.stderr.readline()
                if "listening on" in line or not line:
                    break
            assert "listening on" in line, line
            yield pcap
            sentinel = b"MUSLIN-SENTINEL-" + secrets.token_hex(8).encode()
            send = (f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto({sentinel!r}, "
                    f"('10.250.0.1', 9))")
            assert ns_run(ul, sys.executable, "-c", send).returncode == 0
            assert wait_until(lambda: sentinel in pcap.read_bytes(), 30, 0.1), "tcpdump never caught up"
        finally:
            p.send_signal(signal.SIGTERM)
            err = p.communicate(timeout=10)[1]
        m = re.search(r"(\d+) packets dropped by kernel", err)
        assert m and m.group(1) == "0", err  # the capture saw every packet

    def udp(self, src: str, dst: str, text: str, n: int = 5) -> None:
        """n datagrams holding `text`, from sandbox src to sandbox dst, port 9."""
        send = (f"import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"for _ in range({n}):\n    s.sendto({(text * 4).encode()!r}, ('{self.addr(dst)}', 9)); time.sleep(0.05)")
        r = ns_run(self.ns(src), sys.executable, "-c", send)
        assert r.returncode == 0 or "Operation not permitted" in r.stderr, r.stderr

    @staticmethod
    def count(pcap: Path, filt: str) -> int:
        r = subprocess.run(["tcpdump", "-r", str(pcap), "-n", filt], capture_output=True, text=True)
        return len([ln for ln in r.stdout.splitlines() if ln.strip()])

    def drops(self, host: str) -> int:
        out = ns_run(self.host_ns(host), "nft", "list", "table", "inet", "muslin-wg-net0").stdout
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))


def wg_state(lab: WgLab, host: str) -> dict:
    """What a host's kernel and wireguard-go hold that an agent could change (no counters,
    no handshake times)."""
    s = lab.dump(host)
    nft = ns_run(lab.host_ns(host), "nft", "list", "table", "inet", "muslin-wg-net0").stdout
    return {"routes": sorted(ns_run(lab.host_ns(host), "ip", "-4", "route", "show", "table", "all").stdout.splitlines()),
            "links": sorted(ns_run(lab.host_ns(host), "ip", "-o", "link", "show").stdout.splitlines()),
            "wg": (s.public_key, s.port, frozenset(s.peers)), "wg_pid": lab.wg_pid(host),
            "guard": re.sub(r"counter packets \d+ bytes \d+", "counter", nft)}


@pytest.fixture(scope="module")
def wglab(lab_dir):  # noqa: F811
    if NO_WG:
        pytest.skip(NO_WG)
    name = "w" + suffix()
    try:
        r = lab_cli("up", name, "--hosts", "3", "--backend", "wireguard", "--lease-ttl", str(TTL),
                    "--resync", str(RESYNC))
        assert r.returncode == 0, r.stderr + r.stdout
        lab = WgLab(name)
        for h, sb in (("h1", "a"), ("h2", "b"), ("h3", "c")):
            lab.sandbox(h, sb)
        assert wait_until(lambda: ping(lab.ns("a"), lab.addr("b")) and ping(lab.ns("a"), lab.addr("c"))
                          and ping(lab.ns("b"), lab.addr("c")), 20)
        yield lab
    finally:
        st = None
        try:
            st = core.LabState.load(name)
        except Exception:
            pass
        names = []
        if st is not None:
            names = [core.host_status(st, h).get("companions", {}).get("wireguard", {}).get("ifname", "")
                     for h in st.hosts]
        core.down(name)
        assert not [n for n in core.netns_list() if n.startswith(f"mlab-{name}-")]
        assert not [n for n in names if n and (wgmod.RUN_DIR / f"{n}.sock").exists()]


def test_ping_tcp_8mb_and_the_largest_df_ping_the_mtu_allows(wglab):
    assert ping(wglab.ns("a"), wglab.addr("b"), count=3)
    assert ping(wglab.ns("c"), wglab.addr("a"), count=3)
    assert wglab.tcp("a", "c", 200_000) == "ok"
    assert wglab.tcp("b", "a", 8 * 1024 * 1024) == "ok"
    assert ns_run(wglab.ns("a"), "cat", "/sys/class/net/eth0/mtu").stdout.strip() == "1420"
    assert ns_run(wglab.host_ns("h1"), "cat", f"/sys/class/net/{wglab.ifname('h1')}/mtu").stdout.strip() == "1420"
    assert ping(wglab.ns("a"), wglab.addr("b"), size=1420 - 28)  # IPv4 20 + ICMP 8
    r = ns_run(wglab.ns("a"), "ping", "-c", "1", "-W", "1", "-M", "do", "-s", str(1420 - 27), wglab.addr("b"))
    assert r.returncode != 0 and "message too long, mtu=1420" in r.stdout + r.stderr  # refused, not black-holed


def test_no_plaintext_on_the_underlay_only_wireguard_udp_between_hosts(wglab, tmp_path):
    marker = "MUSLIN-SECRET-" + secrets.token_hex(8)
    control = "MUSLIN-CONTROL-" + secrets.token_hex(8)
    with wglab.capture(tmp_path) as pcap:
        streams = [wglab.marked("a", "b", marker, 2.0, 5101), wglab.marked("c", "a", marker, 2.0, 5102)]
        assert ns_run(wglab.ns("b"), "ping", "-c", "3", "-i", "0.2", "-p", marker.encode().hex()[:32],
                      wglab.addr("c")).returncode == 0
        results = [s.result() for s in streams]
        # the capture does see payloads: the same kind of text sent in the clear to the underlay
        r = ns_run(wglab.host_ns("h1"), sys.executable, "-c",
                   f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'{control}' * 8, "
                   f"('10.250.0.254', 9))")
        assert r.returncode == 0, r.stderr
    for res in results:
        assert "error" not in res and res["bytes"] == res["sent"] > 100_000 and res["sha256"] == res["sent_sha256"], res
    data = pcap.read_bytes()
    assert control.encode() in data  # the capture works
    assert marker.encode() not in data and bytes.fromhex(marker.encode().hex()[:32]) not in data
    wg_udp = wglab.count(pcap, f"{INTER_HOST} and udp port 51820")
    other = subprocess.run(["tcpdump", "-r", str(pcap), "-n", f"{INTER_HOST} and not udp port 51820"],
                           capture_output=True, text=True).stdout
    assert wg_udp > 100 and other.strip() == "", other[:2000]


def test_wg_show_lists_the_other_hosts_with_their_subnets_and_status_their_handshakes(wglab):
    subnets = {h: wglab.subnet(h) for h in ("h1", "h2", "h3")}
    for h in subnets:
        s = wglab.dump(h)
        assert s.port == 51820 and s.public_key == wglab.key(h)
        want = {(wglab.key(o), f"10.250.0.{o[1:]}:51820", (subnets[o], f"10.250.0.{o[1:]}/32"), 25)
                for o in subnets if o != h}
        assert {(p.public_key, p.endpoint, p.allowed_ips, p.keepalive) for p in s.peers} == want
        assert all(t > 0 for _, t, _, _ in s.handshakes)
        key = wglab.st.host_dir(h) / "wireguard.key"
        assert key.stat().st_mode & 0o777 == 0o600
    r = lab_cli("status", wglab.name, "-o", "json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    for h, d in st["hosts"].items():
        assert d["healthy"] and sorted(d["wireguard"]["peers"]) == sorted(o for o in subnets if o != h)
        for o, p in d["wireguard"]["peers"].items():
            assert p["allowed_ips"] == [subnets[o], f"10.250.0.{o[1:]}/32"] and p["handshake_age"] is not None
    table = lab_cli("status", wglab.name)
    assert table.returncode == 0 and table.stdout.count("last handshake") == 6 and " s ago" in table.stdout


def test_kill9_agent_during_a_stream_keeps_it_flowing_and_restart_changes_nothing(wglab):
    hosts = ("h1", "h2", "h3")
    before = {h: wg_state(wglab, h) for h in hosts}
    marks = {h: len(wglab.log(h)) for h in hosts}
    stream = wglab.marked("a", "b", "stream", 5.0, 5103)
    time.sleep(1.0)
    assert core.kill_agent(wglab.name, "h2", signal.SIGKILL)
    time.sleep(2.0)
    assert wglab.wg_pid("h2") == before["h2"]["wg_pid"] != 0  # wireguard-go outlives its agent
    res = stream.result()
    assert "error" not in res and res["bytes"] == res["sent"] and res["sha256"] == res["sent_sha256"], res
    assert res["max_gap"] < 1.0, res
    r = lab_cli("restart-agent", wglab.name, "h2")
    assert r.returncode == 0, r.stderr
    time.sleep(RESYNC + 0.5)  # one resync too
    after = {h: wg_state(wglab, h) for h in hosts}
    assert after == before, [(h, k) for h in hosts for k in before[h] if before[h][k] != after[h][k]]
    new = wglab.log("h2")[marks["h2"]:]
    assert "kept" in new and "reconciled" not in new and "restoring" not in new, new
    for h in ("h1", "h3"):
        assert "reconciled" not in wglab.log(h)[marks[h]:]


def test_kill9_wireguard_go_strict_mode_drops_then_the_agent_restores_it(wglab, tmp_path):
    """With h1's agent paused, wireguard-go is killed: its interface and the routes through
    it go, and a default route offers plaintext a way out; strict mode drops the stream's
    packets (counter up, 0 marker packets on the underlay). Without the guard table the
    same packets do leave in the clear. The agent, resumed, starts wireguard-go again,
    reconfigures it, puts the guard back, and the stream completes intact."""
    h1, marker = wglab.host_ns("h1"), "MUSLIN-STRICT-" + secrets.token_hex(8)
    agent = wglab.st.pids["agent-h1"]
    old = wglab.wg_pid("h1")
    subprocess.run(["ip", "-n", h1, "route", "add", "default", "via", "10.250.0.254", "dev", "eth0"], check=True)
    try:
        stream = wglab.marked("a", "b", marker, 10.0, 5104)
        time.sleep(1.0)
        os.kill(agent, signal.SIGSTOP)
        try:
            dropped = wglab.drops("h1")
            with wglab.capture(tmp_path) as strict:
                os.kill(old, signal.SIGKILL)
                assert wait_until(lambda: not wgmod_exists(h1, wglab.ifname("h1")), 5, 0.05)
                time.sleep(1.0)
                wglab.udp("a", "b", marker)
                assert not ping(wglab.ns("a"), wglab.addr("b"))
            assert wglab.drops("h1") > dropped
            assert marker.encode() not in strict.read_bytes()
            assert wglab.count(strict, f"{INTER_HOST} and not udp port 51820") == 0
            # the control: without strict mode the same stream leaves in the clear
            subprocess.run(["ip", "netns", "exec", h1, "nft", "delete", "table", "inet", "muslin-wg-net0"], check=True)
            with wglab.capture(tmp_path) as lax:
                wglab.udp("a", "b", marker)
            assert marker.encode() in lax.read_bytes()
        finally:
            os.kill(agent, signal.SIGCONT)
        assert wait_until(lambda: wglab.wg_pid("h1") not in (0, old) and ping(wglab.ns("a"), wglab.addr("b")), 15)
        assert wait_until(lambda: "muslin-guard" in ns_run(h1, "nft", "list", "table", "inet",
                                                           "muslin-wg-net0").stdout, RESYNC * 2 + 3)
        res = stream.result()
        assert "error" not in res and res["bytes"] == res["sent"] and res["sha256"] == res["sent_sha256"], res
        log = wglab.log("h1")
        assert "is gone (wireguard-go died?); restoring it" in log and "create device" in log
        # and with the agent running all along: restored within a few seconds
        again = wglab.wg_pid("h1")
        os.kill(again, signal.SIGKILL)
        t0 = time.monotonic()
        assert wait_until(lambda: wglab.wg_pid("h1") not in (0, again) and ping(wglab.ns("a"), wglab.addr("b")), 10)
        print(f"wireguard-go killed with the agent running: traffic back after {time.monotonic() - t0:.2f} s")
    finally:
        subprocess.run(["ip", "-n", h1, "route", "del", "default"], capture_output=True)
    assert {p.public_key for p in wglab.dump("h1").peers} == {wglab.key("h2"), wglab.key("h3")}


def wgmod_exists(ns: str, name: str) -> bool:
    return ns_run(ns, "ip", "link", "show", name).returncode == 0


def test_key_rotation_traffic_resumes_within_10s_and_the_private_key_stays_home(wglab):
    old = wglab.key("h2")
    pinger = subprocess.Popen(["ip", "netns", "exec", wglab.ns("a"), "ping", "-D", "-i", "0.1", "-W", "1", "-w", "14",
                               wglab.addr("b")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(2.0)
    t0 = time.time()
    r = ns_run(wglab.host_ns("h2"), sys.executable, "-m", "muslin.control.agent", "rotate-key", "--state-dir",
               str(wglab.st.host_dir("h2")))
    assert r.returncode == 0, r.stderr
    new = json.loads(r.stdout)["public_key"]
    assert new != old
    assert wait_until(lambda: wglab.key("h2") == new and all(
        new in {p.public_key for p in wglab.dump(h).peers} and old not in {p.public_key for p in wglab.dump(h).peers}
        for h in ("h1", "h3")), 10)
    out, _ = pinger.communicate(timeout=30)
    stamps = [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
    after = [t for t in stamps if t > t0]
    gaps = [b - a for a, b in zip([t0] + after, after)]
    print(f"rotation: {len(stamps)} replies, longest gap after rotate-key {max(gaps):.2f} s")
    assert after and max(gaps) < 10.0 and after[-1] > t0 + 8, (max(gaps) if gaps else None, len(after))
    assert ping(wglab.ns("c"), wglab.addr("b")) and ping(wglab.ns("b"), wglab.addr("a"))
    assert wglab.dump("h2").public_key == new
    key = wglab.st.host_dir("h2") / "wireguard.key"
    assert key.stat().st_mode & 0o777 == 0o600
    secret = key.read_text().strip()
    for f in wglab.st.dir.rglob("*"):  # logs, status files, other hosts' state
        if f.is_file() and f != key and f.suffix not in (".db", ".sock") and "etcd" not in f.parts:
            assert secret not in f.read_text(errors="replace"), f
    assert secret not in json.dumps(core.store_hosts(wglab.st))


def test_a_pod_reaches_the_other_hosts_own_addresses(wglab):
    """A sandbox pings another host's underlay address: the request goes out in the clear,
    the answer through the tunnel from that host's own address (in its peer's allowed-ips)."""
    for target in ("10.250.0.2", "10.250.0.3"):
        assert ping(wglab.ns("a"), target), target


def test_a_host_that_leaves_is_removed_from_its_peers_and_takes_its_tunnel_along(wglab):
    sub3, name3 = wglab.subnet("h3"), wglab.ifname("h3")
    key3 = wglab.key("h3")
    r = lab_cli("kill-agent", wglab.name, "h3", "--signal", "USR1")
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: all(key3 not in {p.public_key for p in wglab.dump(h).peers} and sub3 not in
                                  routes(wglab.host_ns(h)) for h in ("h1", "h2")), 5)
    assert [p.allowed_ips for p in wglab.dump("h1").peers] == [(wglab.subnet("h2"), "10.250.0.2/32")]
    assert not ping(wglab.ns("a"), wglab.addr("c"))
    assert ping(wglab.ns("a"), wglab.addr("b"))
    h3 = wglab.host_ns("h3")
    assert not wgmod_exists(h3, name3) and wglab.wg_pid("h3", name3) == 0
    assert not (wgmod.RUN_DIR / f"{name3}.sock").exists()
    assert ns_run(h3, "nft", "list", "table", "inet", "muslin-wg-net0").returncode != 0
    assert (wglab.st.host_dir("h3") / "wireguard.key").exists()  # the host's identity stays


def test_a_host_without_wireguard_go_or_tun_is_unsupported_before_anything_changes(wglab, tmp_path):
    h1 = wglab.host_ns("h1")
    links = ns_run(h1, "ip", "-o", "link").stdout
    env = [f"PATH={os.environ['PATH']}", "MUSLIN_WIREGUARD_GO=/nonexistent/wireguard-go"]
    r = ns_run(h1, "env", *env, sys.executable, "-m", "muslin.control.agent", "init", "--store",
               wglab.st.store_url, "--network", "wgx", "--backend", "wireguard")
    msg = ("error: wireguard backend: this host cannot run WireGuard: no wireguard kernel module, and for the "
           "userspace fallback no wireguard-go binary (apt-get install wireguard-go)")
    assert r.returncode == 6 and r.stderr.strip() == msg, r.stderr
    assert lab_cli("status", wglab.name).returncode in (0, 7)
    r = ns_run(h1, "env", *env, sys.executable, "-m", "muslin.control.agent", "run", "--store",
               wglab.st.store_url, "--network", "net0", "--hostname", "hx", "--state-dir", str(tmp_path / "s"),
               "--underlay-dev", "eth0", timeout=30)
    assert r.returncode == 6 and r.stderr.strip() == msg, r.stderr
    assert "hx" not in core.store_hosts(wglab.st) and not (tmp_path / "s" / "wireguard.key").exists()
    assert ns_run(h1, "ip", "-o", "link").stdout == links
    r = ns_run(h1, "env", f"PATH={os.environ['PATH']}", "MUSLIN_TUN=/nonexistent/tun", sys.executable, "-m",
               "muslin.control.agent", "init", "--store", wglab.st.store_url, "--network", "wgx", "--backend",
               "wireguard")
    assert r.returncode == 6 and "no TUN device (/dev/net/tun)" in r.stderr and r.stderr.count("\n") == 1
    lab = "x" + suffix()
    r = subprocess.run(["env", "MUSLIN_WG=/nonexistent/wg", sys.executable, "-m", "muslin.lab", "up",
                        lab, "--hosts", "2", "--backend", "wireguard"], capture_output=True, text=True)
    assert r.returncode == 6 and "no wg binary (apt-get install wireguard-tools)" in r.stderr
    assert not [n for n in core.netns_list() if n.startswith(f"mlab-{lab}-")]


@pytest.mark.skipif(not Path("/sys/module/wireguard").exists(),
                    reason="this kernel has no wireguard module (kernel WireGuard is absent here)")
def test_kernel_wireguard_and_wireguard_go_interoperate(netns, tmp_path):
    """The same protocol: a kernel interface and a wireguard-go one talk to each other."""
    a, b = netns("wka"), netns("wkb")
    a.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b.name)
    for ns, n in ((a, 1), (b, 2)):
        ns.run("ip", "addr", "add", f"192.168.99.{n}/24", "dev", "eth0")
        ns.run("ip", "link", "set", "eth0", "up")
    keys = {}
    for ns in (a, b):
        keys[ns.name] = wgmod.write_key(tmp_path / ns.name / "wireguard.key")
    code = ("import sys, json; from muslin.dataplane import wireguard as w; from muslin.model.kernel import WgDev, WgPeer;"
            "d = json.loads(sys.argv[1]); w.create(WgDev(d['name'], 51820, 1420, '', userspace=d['user'], key_file=d['key']));"
            "w.set_peers(d['name'], [], [WgPeer(d['name'], d['peer'], d['ep'], (d['net'],), 25)])")
    names = []
    for ns, peer, n, user in ((a, b, 2, False), (b, a, 1, True)):
        name = "mwk" + suffix(4)
        names.append(name)
        ns.run(sys.executable, "-c", code, json.dumps({"name": name, "user": user, "key": str(tmp_path / ns.name / "wireguard.key"),
                                                        "peer": keys[peer.name], "ep": f"192.168.99.{n}:51820",
                                                        "net": f"10.77.{n}.0/24"}))
        ns.run("ip", "addr", "add", f"10.77.{3 - n}.1/24", "dev", name)
        ns.run("ip", "link", "set", name, "up")
        ns.run("ip", "route", "replace", f"10.77.{n}.0/24", "dev", name)
    try:
        assert wait_until(lambda: a.ping("10.77.2.1"), 10)
    finally:
        b.run("ip", "link", "del", names[1], check=False)
        for name in names:
            (wgmod.RUN_DIR / f"{name}.sock").unlink(missing_ok=True)

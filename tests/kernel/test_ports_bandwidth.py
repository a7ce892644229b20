"""Published ports (HTTP and UDP, host-IP binding, conflicts, DEL) and bandwidth limits
(iperf3 through tc, 100 cycles) through the `muslin` CLI and `muslin-cni`, with packets,
in a namespace that plays the host."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from nsutil import Netns, random_subnet24, sh, suffix, tool
from test_cli_bridge import World, _ns, host_links, ip_of, world  # noqa: F401 - fixture
from test_cni_conformance import Cni, cni, container_addr, run_chain  # noqa: F401 - fixture

from muslin.model import names

pytestmark = pytest.mark.kernel

UPLINK = "172.31.254.1"  # the host's address towards the 'outside' namespace (test_cli_bridge.World)

UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(b"udp:" + data, peer)
"""

UDP_ASK = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
for _ in range(8):
    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recv(65536).decode())
        break
    except OSError:
        pass
"""


class Servers:
    """busybox httpd (serving `tag`) on port 80 and a UDP echo on port 53 in a namespace."""

    def __init__(self, ns: Netns, tmp, tag: str) -> None:
        www = tmp / f"www-{tag}"
        www.mkdir()
        (www / "index.html").write_text(f"page-{tag}\n")
        self.procs = [ns.popen("busybox", "httpd", "-f", "-p", "0.0.0.0:80", "-h", str(www),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        udp = ns.popen(sys.executable, "-c", UDP_ECHO, "53", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
        self.procs.append(udp)
        assert "ready" in udp.stdout.readline()

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def http(ns: Netns, addr: str, port: int, tries: int = 6) -> str:
    for _ in range(tries):
        r = ns.run("curl", "-s", "-m", "3", f"http://{addr}:{port}/", check=False, timeout=20)
        if r.returncode == 0:
            return r.stdout.strip()
        time.sleep(0.3)
    return ""


def udp(ns: Netns, addr: str, port: int, text: str) -> str:
    return ns.run(sys.executable, "-c", UDP_ASK, addr, str(port), text, check=False, timeout=30).stdout.strip()


def nft_of(ns: Netns) -> str:
    return ns.run("nft", "list", "table", "inet", "muslin", check=False).stdout


# ------------------------------------------------------------------------------ the CLI

def test_cli_http_udp_host_ip_conflict_and_disconnect(world, tmp_path):
    w = world
    w.muslin("network", "create", "pub", "--subnet", random_subnet24())
    a, b = w.sandbox("a"), w.sandbox("b")
    w.connect("pub", a, "-p", "8080:80", "-p", "5353:53/udp", "-p", "127.0.0.1:8081:80",
              "-p", f"{UPLINK}:5354:53/udp")
    eb = w.connect("pub", b, "-p", "9090:80")
    sa, sb = Servers(_ns(a), tmp_path, "a"), Servers(_ns(b), tmp_path, "b")
    try:
        # HTTP: from another namespace (the outside, through the host's uplink address),
        # from 127.0.0.1 of the host, from the host's own address, by hairpin, from a neighbour.
        assert http(w.out, UPLINK, 8080) == "page-a"
        assert http(w.host, "127.0.0.1", 8080) == "page-a"
        assert http(w.host, UPLINK, 8080) == "page-a"
        assert http(_ns(a), UPLINK, 8080) == "page-a"
        assert http(_ns(b), UPLINK, 8080) == "page-a"
        # UDP the same ways
        assert udp(w.out, UPLINK, 5353, "o") == "udp:o"
        assert udp(w.host, "127.0.0.1", 5353, "l") == "udp:l"
        assert udp(_ns(a), UPLINK, 5353, "h") == "udp:h"
        # host-IP binding: 127.0.0.1:8081 only answers there; UPLINK:5354/udp only there
        assert http(w.host, "127.0.0.1", 8081) == "page-a"
        assert http(w.out, UPLINK, 8081, tries=1) == ""
        assert udp(w.out, UPLINK, 5354, "u") == "udp:u"
        assert udp(w.host, "127.0.0.1", 5354, "x") == ""
        # A second mapping of a host port: exit status 4 (Conflict), one clear line, nothing changed.
        before = (host_links(w), nft_of(w.host), w.muslin("network", "inspect", "pub").stdout)
        c = w.sandbox("c")
        for spec in ("8080:80", "127.0.0.1:8080:80", "5353:53/udp", f"{UPLINK}:9090:80"):
            r = w.muslin("connect", "pub", c, "-p", spec, check=False)
            assert r.returncode == 4, (spec, r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and "already published" in lines[0], r.stderr
            assert "Traceback" not in r.stderr
            assert (host_links(w), nft_of(w.host), w.muslin("network", "inspect", "pub").stdout) == before
        # bad words: exit status 2
        for spec in ("0:80", "8080:80/icmp", "x:8080:80"):
            r = w.muslin("connect", "pub", c, "-p", spec, check=False)
            assert r.returncode == 2 and "Traceback" not in r.stderr, (spec, r.stderr)
        # Disconnecting a removes exactly its entries: b's mapping still answers.
        w.muslin("disconnect", "pub", a)
        table = nft_of(w.host)
        for port in ("8080", "8081", "5353", "5354"):
            assert f" {port} :" not in table, table
        assert f"tcp . 9090 : {ip_of(eb)} . 80" in table
        assert http(w.out, UPLINK, 9090) == "page-b"
        assert http(w.out, UPLINK, 8080, tries=1) == ""
    finally:
        sa.stop()
        sb.stop()


# ------------------------------------------------------------------------------ CNI

def _host_uplink(cni: Cni, netns) -> Netns:
    """An 'outside' namespace reaching the CNI host namespace: 192.168.77.1 (host) <-> .2."""
    client = netns("cl")
    h = cni.host.name
    peer = "cl" + suffix()
    sh("ip", "-n", h, "link", "add", "uplink0", "type", "veth", "peer", "name", peer)
    sh("ip", "-n", h, "link", "set", peer, "netns", client.name)
    sh("ip", "-n", client.name, "link", "set", peer, "name", "eth0")
    sh("ip", "-n", h, "addr", "add", "192.168.77.1/24", "dev", "uplink0")
    sh("ip", "-n", h, "link", "set", "uplink0", "up")
    sh("ip", "-n", client.name, "addr", "add", "192.168.77.2/24", "dev", "eth0")
    sh("ip", "-n", client.name, "link", "set", "eth0", "up")
    return client


def test_cni_port_mappings_conflict_and_del_without_them(cni, netns, tmp_path):
    c1, c2 = netns("c1"), netns("c2")
    out = _host_uplink(cni, netns)
    conf = cni.conf("1.0.0")
    pm = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
          {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]
    r1 = cni.add({**conf, "runtimeConfig": {"portMappings": pm}}, c1)
    before = cni.snapshot()
    rc, res, _ = cni.call("muslin-cni", "ADD", {**conf, "runtimeConfig": {"portMappings": [pm[0]]}},
                          cid=c2.name, netns=c2.path)
    assert rc == 1 and res["code"] == 7 and "already published" in res["msg"], res
    assert cni.snapshot() == before
    r2 = cni.add({**conf, "runtimeConfig": {"portMappings": [{"hostPort": 9090, "containerPort": 80}]}}, c2)
    s1, s2 = Servers(c1, tmp_path, "c1"), Servers(c2, tmp_path, "c2")
    try:
        assert http(out, "192.168.77.1", 8080) == "page-c1"
        assert http(cni.host, "127.0.0.1", 8080) == "page-c1"
        assert http(c1, "192.168.77.1", 8080) == "page-c1"  # hairpin
        assert udp(out, "192.168.77.1", 5353, "q") == "udp:q"
        assert udp(cni.host, "127.0.0.1", 5353, "q") == "udp:q"
        # DEL without portMappings (runtimes do not always send them again): c1's entries go, c2's stay
        cni.ok("DEL", {**conf, "prevResult": r1}, c1)
        table = nft_of(cni.host)
        assert " 8080 :" not in table and " 5353 :" not in table
        assert f"tcp . 9090 : {container_addr(r2)} . 80" in table
        assert http(out, "192.168.77.1", 9090) == "page-c2"
    finally:
        s1.stop()
        s2.stop()
    cni.ok("DEL", conf, c2)
    assert cni.allocations() == []


def test_cni_ports_with_the_reference_portmap_chained(cni, netns, tmp_path):
    """portmap after muslin-cni DNATs the same port to the same place: all of it still works,
    and the chain's DEL leaves nothing of either."""
    c = netns("c")
    out = _host_uplink(cni, netns)
    base = cni.conf("1.0.0")
    base.pop("cniVersion"), base.pop("name")
    conflist = {"cniVersion": "1.0.0", "name": "pm" + suffix(), "plugins": [
        {**base, "capabilities": {"portMappings": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    runtime = {"portMappings": [{"hostPort": 8088, "containerPort": 80, "protocol": "tcp"},
                                {"hostPort": 5388, "containerPort": 53, "protocol": "udp"}]}
    res = run_chain(cni, "ADD", conflist, c, runtime)
    s = Servers(c, tmp_path, "pm")
    try:
        assert http(out, "192.168.77.1", 8088) == "page-pm"
        assert http(cni.host, "127.0.0.1", 8088) == "page-pm"
        assert http(c, "192.168.77.1", 8088) == "page-pm"
        assert udp(out, "192.168.77.1", 5388, "p") == "udp:p"
    finally:
        s.stop()
    run_chain(cni, "DEL", conflist, c, runtime, prev=res)
    assert "muslin" not in cni.host.run("nft", "list", "tables").stdout
    assert "8088" not in cni.host.run("iptables-save", check=False).stdout
    assert sorted(cni.links()) == ["lo", "uplink0"]


def test_cni_bandwidth_capability_and_keys(cni, netns):
    c1, c2 = netns("c1"), netns("c2")
    conf = cni.conf("1.0.0")
    bw = {"ingressRate": 8_000_000, "ingressBurst": 800_000, "egressRate": 4_000_000, "egressBurst": 400_000}
    r1 = cni.add({**conf, "runtimeConfig": {"bandwidth": bw}}, c1)
    r2 = cni.add({**conf, "egressRate": 2_000_000, "egressBurst": 200_000}, c2)  # the plugin keys
    h = cni.host.name
    v1, v2 = r1["interfaces"][1]["name"], r2["interfaces"][1]["name"]
    assert "tbf" in sh("tc", "-n", h, "qdisc", "show", "dev", v1, "root").stdout
    assert "8Mbit" in sh("tc", "-n", h, "qdisc", "show", "dev", v1, "root").stdout
    ifb1 = names.ifb_name(conf["name"], f"{c1.name}/eth0")
    assert "4Mbit" in sh("tc", "-n", h, "qdisc", "show", "dev", ifb1).stdout
    assert "ingress" in sh("tc", "-n", h, "qdisc", "show", "dev", v2).stdout
    assert "tbf" not in sh("tc", "-n", h, "qdisc", "show", "dev", v2).stdout
    # rate without burst: code 7, one line, nothing made
    before = cni.snapshot()
    rc, res, _ = cni.call("muslin-cni", "ADD", {**conf, "runtimeConfig": {"bandwidth": {"ingressRate": 1000}}},
                          cid="c3" + suffix(), netns=c2.path, ifname="eth1")
    assert rc == 1 and res["code"] == 7 and "set both or neither" in res["msg"], res
    assert cni.snapshot() == before
    # CHECK agrees while the limits are there, and fails once one is removed by hand
    cni.ok("CHECK", {**conf, "prevResult": r1}, c1)
    cni.ok("CHECK", {**conf, "prevResult": r2}, c2)
    sh("tc", "-n", h, "qdisc", "del", "dev", ifb1, "root")
    rc, res, _ = cni.call("muslin-cni", "CHECK", {**conf, "prevResult": r1}, cid=c1.name, netns=c1.path)
    assert rc == 1 and "egress limit" in res["msg"], res
    # DEL without the limits in the config: the ifbs and the qdiscs go
    cni.ok("DEL", conf, c1)
    cni.ok("DEL", conf, c2)
    assert sorted(cni.links()) == ["lo"]
    assert cni.allocations() == []


# ------------------------------------------------------------------------------ rates

def iperf3(client: Netns, server: Netns, addr: str, reverse: bool, seconds: int = 4) -> float:
    """Mbit/s the receiver measured (TCP, one stream, the first second left out)."""
    port = str(5201 + int(suffix(4), 16) % 500)
    srv = server.popen("iperf3", "-s", "-1", "-p", port, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(30):
            r = client.run("iperf3", "-c", addr, "-p", port, "-t", str(seconds), "-O", "1", "-J",
                           *(["-R"] if reverse else []), check=False, timeout=60)
            d = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
            if r.returncode == 0 and "sum_received" in d.get("end", {}):
                return d["end"]["sum_received"]["bits_per_second"] / 1e6
            last = d.get("error") or r.stderr
            if "unable to connect" not in str(last) and "refused" not in str(last):
                raise AssertionError(f"iperf3: {last}")
            time.sleep(0.2)  # the server is not listening yet
        raise AssertionError(f"iperf3: {last}")
    finally:
        srv.kill()
        srv.wait()


def within(measure, want: float) -> float:
    """One retry on a loaded machine: this checks the rate tc enforces, not Muslin's speed."""
    got = measure()
    if abs(got - want) > want * 0.1:
        got = measure()
    return got


def test_iperf3_through_10mbit_each_way(world):
    w = world
    w.muslin("network", "create", "bw", "--subnet", random_subnet24())
    a, b = w.sandbox("a"), w.sandbox("b")
    ea = w.connect("bw", a, "--ingress-rate", "10mbit", "--egress-rate", "10mbit")
    w.connect("bw", b)
    assert ea["bandwidth"]["ingressRate"] == 10_000_000
    # into a (its ingress): b sends; out of a (its egress): a sends (-R)
    into = within(lambda: iperf3(_ns(b), _ns(a), ip_of(ea), reverse=False), 10.0)
    out = within(lambda: iperf3(_ns(b), _ns(a), ip_of(ea), reverse=True), 10.0)
    print(f"through 10mbit: into the sandbox {into:.2f} Mbit/s, out of it {out:.2f} Mbit/s")
    assert 9.0 <= into <= 11.0, into
    assert 9.0 <= out <= 11.0, out
    w.muslin("disconnect", "bw", a)
    assert not [n for n in host_links(w) if n.startswith("mb")]
    # without the limit the same path is far faster: the limit is what held it at 10
    ea = w.connect("bw", a)
    free = iperf3(_ns(b), _ns(a), ip_of(ea), reverse=False, seconds=2)
    print(f"without a limit: {free:.0f} Mbit/s")
    assert free > 30, free


def test_100_cycles_leave_no_ifb_or_qdisc(world):
    w = world
    w.muslin("network", "create", "cy", "--subnet", random_subnet24())
    a = w.sandbox("a")
    script = f"""
import sys
from muslin.control import sandboxes
from muslin.control.service import Muslin
from muslin.model.types import Bandwidth
from muslin.store import open_store
m = Muslin(open_store({w.state!r}), {w.state!r})
bw = Bandwidth(10_000_000, 524_288, 10_000_000, 524_288)
for i in range(100):
    sandboxes.connect(m, "cy", {a!r}, bandwidth=bw)
    sandboxes.disconnect(m, "cy", {a!r})
print("done")
"""
    r = w.host.run(sys.executable, "-c", script, check=False, timeout=600)
    assert r.stdout.strip() == "done", r.stderr[-2000:]
    links = sh("ip", "-n", w.host.name, "-o", "link").stdout
    assert " ifb" not in links and "link/ether" in links
    assert not [n for n in host_links(w) if n.startswith(("mb", "mv"))], host_links(w)
    qd = sh("tc", "-n", w.host.name, "qdisc", "show").stdout
    assert "tbf" not in qd and "ingress" not in qd, qd
    # the CLI path once more, then nothing either
    w.connect("cy", a, "--ingress-rate", "10mbit", "--egress-rate", "10mbit", "--egress-burst", "1mbit")
    assert "tbf" in sh("tc", "-n", w.host.name, "qdisc", "show").stdout
    w.muslin("disconnect", "cy", a)
    qd = sh("tc", "-n", w.host.name, "qdisc", "show").stdout
    assert "tbf" not in qd and "ingress" not in qd, qd
    assert not [n for n in host_links(w) if n.startswith("mb")]


def test_100_cni_add_del_cycles_leave_no_ifb_or_qdisc(cni, netns):
    if cni.agent is None:
        pytest.skip("100 cycles through muslind only (in-process plugins start an interpreter per call)")
    c = netns("c")
    conf = cni.conf("1.0.0")
    bw = {"ingressRate": 10_000_000, "ingressBurst": 524_288, "egressRate": 10_000_000, "egressBurst": 524_288}
    h = cni.host.name
    for i in range(100):
        res = cni.add({**conf, "runtimeConfig": {"bandwidth": bw}}, c)
        if i == 0:
            assert "tbf" in sh("tc", "-n", h, "qdisc", "show", "dev", res["interfaces"][1]["name"]).stdout
        cni.ok("DEL", conf, c)  # without the limits
    assert sorted(cni.links()) == ["lo"]
    assert sh("ip", "-n", h, "-o", "link", "show", "type", "ifb").stdout.strip() == ""
    qd = sh("tc", "-n", h, "qdisc", "show").stdout
    assert "tbf" not in qd and "ingress" not in qd, qd
    assert cni.allocations() == []

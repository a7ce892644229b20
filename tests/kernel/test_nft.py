"""Muslin's nftables table with real packets, in throwaway namespaces.

Topology (all inside namespaces this test makes):

    OUT 172.31.250.2 / fd70::2  --veth--  HOST 172.31.250.1 / fd70::1
                                          HOST bridges: mbrA 10.71.0.1/24 fd71::1/64  (c1 .2, c2 .3)
                                                        mbrB 10.72.0.1/24              (c3 .2)
                                                        mbrI 10.73.0.1/24 (internal)   (c4 .2)

OUT has routes to the container subnets via HOST, so "blocked" means blocked by the
rules and "masqueraded" is visible as the source address an echo server reports.
The whole module runs twice: with br_netfilter hooks on (bridge-nf-call-ip*tables=1,
the machine's default) and off, since that changes how bridged and hairpin packets
traverse the inet hooks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nsutil import NetnsFactory, sh

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

SERVER = textwrap.dedent("""
    import socket, sys, threading
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", int(sys.argv[1])))
    s.listen(64)
    print("ready", flush=True)
    while True:
        c, peer = s.accept()
        ip = peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
        try:
            c.sendall((sys.argv[2] + " " + ip + "\\n").encode())
        finally:
            c.close()
""")

CLIENT = textwrap.dedent("""
    import socket, sys
    host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    try:
        c = socket.create_connection((host, port), timeout=timeout)
        data = c.makefile().readline().strip()
    except OSError as e:
        print("fail", e)
        sys.exit(1)
    print(data)
""")

DRIVER = textwrap.dedent("""
    import ipaddress, json, sys
    from muslin.firewall import FirewallState, NetRule, PortRule
    from muslin.dataplane import nft
    from muslin.model.errors import MuslinError
    d = json.load(sys.stdin)
    try:
        if d.get("op") == "observe":
            rs = nft.observe()
            print(json.dumps(None if rs is None else {"digest": rs.digest,
                  "elements": {k: sorted(v) for k, v in rs.elements.items()}}))
            sys.exit(0)
        state = FirewallState(
            tuple(NetRule(n["bridge"], tuple(ipaddress.ip_network(s) for s in n["subnets"]),
                          n.get("masquerade", True), n.get("internal", False), n.get("isolate", True),
                          tuple(n.get("gateways", ())))
                  for n in d["networks"]),
            tuple(PortRule(p["ep"], p.get("proto", "tcp"), p.get("host_ip", ""), p["hp"],
                           ipaddress.ip_address(p["cip"]), p["cp"], p["bridge"]) for p in d["ports"]))
        print(nft.sync(state, "muslin-owner 000000000000 /test"))
    except MuslinError as e:
        print(f"{type(e).__name__}: {e}")
        sys.exit(1)
""")

NET_A = {"bridge": "mbrA", "subnets": ["10.71.0.0/24", "fd71::/64"], "gateways": ["10.71.0.1", "fd71::1"]}
NET_B = {"bridge": "mbrB", "subnets": ["10.72.0.0/24"], "masquerade": False, "isolate": False,
         "gateways": ["10.72.0.1"]}
NET_I = {"bridge": "mbrI", "subnets": ["10.73.0.0/24"], "internal": True, "gateways": ["10.73.0.1"]}
P_C1 = {"ep": "c1", "hp": 8080, "cip": "10.71.0.2", "cp": 80, "bridge": "mbrA"}
P_C1_V6 = {"ep": "c1", "hp": 8080, "cip": "fd71::2", "cp": 80, "bridge": "mbrA"}
P_C2 = {"ep": "c2", "hp": 8081, "cip": "10.71.0.3", "cp": 80, "bridge": "mbrA"}
P_C2_LO = {"ep": "c2", "hp": 9000, "host_ip": "127.0.0.1", "cip": "10.71.0.3", "cp": 80, "bridge": "mbrA"}
ALL_NETS = [NET_A, NET_B, NET_I]
ALL_PORTS = [P_C1, P_C1_V6, P_C2, P_C2_LO]
OTHER_TABLE = """table ip other {
\tset keep {
\t\ttype ipv4_addr
\t\telements = { 10.9.9.9 }
\t}

\tchain c {
\t\ttype filter hook input priority 10; policy accept;
\t\tip saddr @keep counter packets 0 bytes 0
\t}
}
"""


class Lab:
    def __init__(self, brnf: int, tmp: Path) -> None:
        self.f = NetnsFactory(prefix="mfw")
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        (tmp / "server.py").write_text(SERVER)
        (tmp / "client.py").write_text(CLIENT)
        (tmp / "driver.py").write_text(DRIVER)
        self.host = self.f("host")
        self.out = self.f("out")
        self.c = {name: self.f(name) for name in ("c1", "c2", "c3", "c4")}
        h = self.host.name
        self.brnf_supported = Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
        if self.brnf_supported:
            for fam in ("iptables", "ip6tables"):
                self.host.run("sh", "-c", f"echo {brnf} > /proc/sys/net/bridge/bridge-nf-call-{fam}")
        # uplink to OUT
        sh("ip", "-n", h, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", self.out.name)
        sh("ip", "-n", h, "addr", "add", "172.31.250.1/24", "dev", "up0")
        sh("ip", "-n", h, "addr", "add", "fd70::1/64", "dev", "up0", "nodad")
        sh("ip", "-n", h, "link", "set", "up0", "up")
        o = self.out.name
        sh("ip", "-n", o, "addr", "add", "172.31.250.2/24", "dev", "eth0")
        sh("ip", "-n", o, "addr", "add", "fd70::2/64", "dev", "eth0", "nodad")
        sh("ip", "-n", o, "link", "set", "eth0", "up")
        for net in ("10.71.0.0/24", "10.72.0.0/24", "10.73.0.0/24"):
            sh("ip", "-n", o, "route", "add", net, "via", "172.31.250.1")
        sh("ip", "-n", o, "-6", "route", "add", "fd71::/64", "via", "fd70::1")
        # bridges
        for br, a4, a6 in (("mbrA", "10.71.0.1/24", "fd71::1/64"), ("mbrB", "10.72.0.1/24", None),
                           ("mbrI", "10.73.0.1/24", None)):
            sh("ip", "-n", h, "link", "add", br, "type", "bridge")
            sh("ip", "-n", h, "addr", "add", a4, "dev", br)
            if a6:
                sh("ip", "-n", h, "addr", "add", a6, "dev", br, "nodad")
            sh("ip", "-n", h, "link", "set", br, "up")
        # containers
        for name, br, a4, a6 in (("c1", "mbrA", "10.71.0.2/24", "fd71::2/64"), ("c2", "mbrA", "10.71.0.3/24", None),
                                 ("c3", "mbrB", "10.72.0.2/24", None), ("c4", "mbrI", "10.73.0.2/24", None)):
            ns = self.c[name].name
            sh("ip", "-n", h, "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", h, "link", "set", f"v{name}", "master", br, "up")
            sh("ip", "-n", ns, "addr", "add", a4, "dev", "eth0")
            if a6:
                sh("ip", "-n", ns, "addr", "add", a6, "dev", "eth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", a4.split(".")[0] + "." + a4.split(".")[1] + ".0.1")
            if a6:
                sh("ip", "-n", ns, "-6", "route", "add", "default", "via", "fd71::1")
        self.host.run("nft", "-f", "-", input=OTHER_TABLE)
        self.other_before = self.host.run("nft", "list", "table", "ip", "other").stdout
        self.brnf = brnf if self.brnf_supported else 0
        # echo servers: c1 and c2 on :80, OUT on :7000
        self.serve(self.c["c1"], 80, "c1")
        self.serve(self.c["c2"], 80, "c2")
        self.serve(self.out, 7000, "out")

    def serve(self, ns, port: int, tag: str) -> None:
        p = ns.popen(PY, str(self.tmp / "server.py"), str(port), tag, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready"

    def connect(self, ns, host: str, port: int, timeout: float = 3.0) -> str | None:
        """The echo server's answer "<tag> <peer address>", or None when it cannot connect."""
        r = ns.run(PY, str(self.tmp / "client.py"), host, str(port), str(timeout), check=False, timeout=timeout + 10)
        return r.stdout.strip() if r.returncode == 0 else None

    def sync(self, nets, ports) -> str:
        d = {"networks": nets, "ports": ports}
        return self.drive(d)

    def drive(self, d: dict) -> str:
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), MUSLIN_NFT=self.nft)
        r = self.host.run(PY, str(self.tmp / "driver.py"), input=json.dumps(d), check=False, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.strip()

    def observe(self):
        return json.loads(self.drive({"op": "observe"}))

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self.f.cleanup()


@pytest.fixture(scope="module", params=[(1, "library"), (0, "binary")],
                ids=["br_netfilter-on-libnftables", "br_netfilter-off-nft-binary"])
def lab(request, tmp_path_factory):
    brnf, backend = request.param
    if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() and brnf == 1:
        pytest.skip("br_netfilter is not loaded on this machine")
    lab = Lab(brnf, tmp_path_factory.mktemp("nft"))
    lab.nft = backend
    try:
        yield lab
    finally:
        lab.close()


def test_first_sync_builds_table_and_observe_matches(lab):
    assert lab.sync(ALL_NETS, ALL_PORTS) in ("full", "delta")
    assert lab.sync(ALL_NETS, ALL_PORTS) == "noop"
    obs = lab.observe()
    assert obs["digest"] != "drift"
    assert obs["elements"]["ports4"] == ["tcp . 8080 : 10.71.0.2 . 80", "tcp . 8081 : 10.71.0.3 . 80"]
    assert obs["elements"]["hostports4"] == ["127.0.0.1 . tcp . 9000 : 10.71.0.3 . 80"]
    assert lab.host.run("cat", "/proc/sys/net/ipv4/conf/mbrA/route_localnet").stdout.strip() == "1"


def test_masquerade(lab):
    lab.sync(ALL_NETS, ALL_PORTS)
    # mbrA masquerades: OUT sees the host's uplink address
    assert lab.connect(lab.c["c1"], "172.31.250.2", 7000) == "out 172.31.250.1"
    assert lab.connect(lab.c["c1"], "fd70::2", 7000) == "out fd70::1"
    # mbrB does not masquerade: OUT sees the container (it has a route back)
    assert lab.connect(lab.c["c3"], "172.31.250.2", 7000) == "out 10.72.0.2"


def test_internal_network_is_cut_off(lab):
    lab.sync(ALL_NETS, ALL_PORTS)
    assert not lab.c["c4"].ping("172.31.250.2")
    assert not lab.out.ping("10.73.0.2")
    assert lab.connect(lab.c["c4"], "172.31.250.2", 7000, timeout=1.5) is None
    # the host itself still reaches it (not forwarded)
    assert lab.host.ping("10.73.0.2")


def test_isolation(lab):
    lab.sync(ALL_NETS, ALL_PORTS)
    assert lab.c["c1"].ping("10.71.0.3")        # same bridge
    assert not lab.c["c1"].ping("10.72.0.2")    # mbrA isolates
    assert not lab.c["c3"].ping("10.71.0.2")
    assert not lab.c["c3"].ping("10.73.0.2")    # to the internal network
    open_a = dict(NET_A, isolate=False)
    assert lab.sync([open_a, NET_B, NET_I], ALL_PORTS) == "delta"
    assert lab.c["c1"].ping("10.72.0.2")        # neither isolates now
    assert lab.c["c3"].ping("10.71.0.2")


def test_port_mappings(lab):
    lab.sync(ALL_NETS, ALL_PORTS)
    # from outside: DNAT, source kept
    assert lab.connect(lab.out, "172.31.250.1", 8080) == "c1 172.31.250.2"
    assert lab.connect(lab.out, "172.31.250.1", 8081) == "c2 172.31.250.2"
    assert lab.connect(lab.out, "fd70::1", 8080) == "c1 fd70::2"
    # a mapping bound to 127.0.0.1 is not reachable from outside
    assert lab.connect(lab.out, "172.31.250.1", 9000, timeout=1.5) is None
    # from the host itself, by loopback and by its own address
    assert lab.connect(lab.host, "127.0.0.1", 8080) == "c1 10.71.0.1"
    assert lab.connect(lab.host, "127.0.0.1", 9000) == "c2 10.71.0.1"
    assert lab.connect(lab.host, "172.31.250.1", 8081) is not None
    # hairpin: a container to its own published port, and to its neighbour's, via host addresses.
    # With br_netfilter hooks on, the DNATed packet is bridged ("bridged DNAT") back out of
    # the port it came in by: only the port's hairpin mode lets it pass (Network.hairpin).
    if lab.brnf:
        assert lab.connect(lab.c["c1"], "172.31.250.1", 8080, timeout=1.5) is None
        sh("ip", "-n", lab.host.name, "link", "set", "vc1", "type", "bridge_slave", "hairpin", "on")
    try:
        assert lab.connect(lab.c["c1"], "172.31.250.1", 8080) == "c1 10.71.0.1"
        assert lab.connect(lab.c["c1"], "fd71::1", 8080) == "c1 fd71::1"
    finally:
        sh("ip", "-n", lab.host.name, "link", "set", "vc1", "type", "bridge_slave", "hairpin", "off")
    assert lab.connect(lab.c["c1"], "10.71.0.1", 8081) == "c2 10.71.0.1"
    assert lab.connect(lab.c["c2"], "10.71.0.1", 8080) == "c1 10.71.0.1"
    # from a container on another network, via the host (published ports cross isolation)
    assert lab.connect(lab.c["c3"], "172.31.250.1", 8080) is not None


def test_removing_one_mapping_leaves_the_others(lab):
    lab.sync(ALL_NETS, ALL_PORTS)
    assert lab.sync(ALL_NETS, [P_C1, P_C1_V6, P_C2_LO]) == "delta"
    assert lab.connect(lab.out, "172.31.250.1", 8081, timeout=1.5) is None
    assert lab.connect(lab.out, "172.31.250.1", 8080) == "c1 172.31.250.2"
    assert lab.connect(lab.host, "127.0.0.1", 9000) == "c2 10.71.0.1"
    obs = lab.observe()
    assert obs["elements"]["ports4"] == ["tcp . 8080 : 10.71.0.2 . 80"]
    assert lab.sync(ALL_NETS, ALL_PORTS) == "delta"
    assert lab.connect(lab.out, "172.31.250.1", 8081) == "c2 172.31.250.2"


def test_drift_is_repaired(lab):
    lab.sync(ALL_NETS, ALL_PORTS)
    lab.host.run("nft", "delete", "element", "inet", "muslin", "ports4", "{ tcp . 8080 }")
    assert lab.connect(lab.out, "172.31.250.1", 8080, timeout=1.5) is None
    assert lab.sync(ALL_NETS, ALL_PORTS) == "delta"
    assert lab.connect(lab.out, "172.31.250.1", 8080) == "c1 172.31.250.2"
    lab.host.run("nft", "add", "rule", "inet", "muslin", "forward", "drop")  # a foreign rule in our table
    assert lab.observe()["digest"] == "drift"
    assert lab.sync(ALL_NETS, ALL_PORTS) == "full"
    assert lab.c["c1"].ping("10.71.0.3") and lab.connect(lab.out, "172.31.250.1", 8080) is not None


def test_empty_state_deletes_table_and_other_table_untouched(lab):
    lab.sync(ALL_NETS, ALL_PORTS)
    assert lab.sync([], []) == "deleted"
    assert lab.sync([], []) == "noop"
    assert lab.observe() is None
    tables = lab.host.run("nft", "list", "tables").stdout.split("\n")
    assert [t for t in tables if t] == ["table ip other"]
    assert lab.host.run("nft", "list", "table", "ip", "other").stdout == lab.other_before
    # without our table the internal network is no longer cut off: the drop was ours
    assert lab.c["c4"].ping("172.31.250.2")


def test_bad_state_changes_nothing(lab):
    lab.sync(ALL_NETS, ALL_PORTS)
    before = lab.host.run("nft", "list", "table", "inet", "muslin").stdout
    clash = dict(P_C2, hp=8080)
    out = subprocess.run(
        ["ip", "netns", "exec", lab.host.name, PY, str(lab.tmp / "driver.py")],
        input=json.dumps({"networks": ALL_NETS, "ports": ALL_PORTS + [clash], "lock_dir": str(lab.tmp / "lock")}),
        text=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert out.returncode == 1 and out.stdout.startswith("Conflict: firewall: host port 0.0.0.0:8080/tcp is mapped twice")
    assert lab.host.run("nft", "list", "table", "inet", "muslin").stdout == before
    lab.sync([], [])


def test_concurrent_syncs_are_serialised(lab):
    """Several processes syncing at once (each observe+apply under the flock): without the
    lock two of them would both try to delete the same element and one would fail."""
    lab.sync(ALL_NETS, ALL_PORTS)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    d = json.dumps({"networks": ALL_NETS, "ports": [P_C1, P_C1_V6], "lock_dir": str(lab.tmp / "lock")})
    procs = [subprocess.Popen(["ip", "netns", "exec", lab.host.name, PY, str(lab.tmp / "driver.py")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(6)]
    results = [p.communicate(d, timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert sorted(r[0].strip() for r in results) == ["delta"] + ["noop"] * 5
    assert lab.observe()["elements"]["ports4"] == ["tcp . 8080 : 10.71.0.2 . 80"]
    assert lab.connect(lab.out, "172.31.250.1", 8080) == "c1 172.31.250.2"
    lab.sync([], [])


def test_same_bridge_traffic_is_not_tracked(lab):
    """Within one bridge's subnet nothing needs conntrack: those flows get no entry; a flow to
    the gateway (the host) and one across bridges stay tracked."""
    lab.sync(ALL_NETS, ALL_PORTS)

    def entries(addr: str) -> list[str]:
        return [ln for ln in lab.host.run("cat", "/proc/net/nf_conntrack").stdout.splitlines() if addr in ln]

    assert lab.c["c1"].ping("10.71.0.3")
    assert not [e for e in entries("dst=10.71.0.3") if "src=10.71.0.2" in e]
    assert lab.c["c2"].ping("10.71.0.1")
    assert [e for e in entries("dst=10.71.0.1") if "src=10.71.0.3" in e]  # to the host: tracked

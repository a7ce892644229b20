"""The `muslin` CLI and the bridge driver, in a namespace that plays the host.

Real packets: ping and TCP between sandboxes, masquerade towards an 'outside'
namespace, isolation between networks, internal networks, and teardown that leaves
nothing behind.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest
from nsutil import EchoServer, random_subnet24, sh, suffix, tcp_echo, tool

pytestmark = pytest.mark.kernel


class World:
    """A host namespace H with an 'outside' namespace O reached over a veth pair."""

    def __init__(self, netns, state_dir) -> None:
        self.host = netns("host")
        self.out = netns("out")
        self.state = str(state_dir)
        self.tag = suffix()
        sh("ip", "-n", self.host.name, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0",
           "netns", self.out.name)
        sh("ip", "-n", self.host.name, "addr", "add", "172.31.254.1/30", "dev", "uplink")
        sh("ip", "-n", self.host.name, "link", "set", "uplink", "up")
        sh("ip", "-n", self.out.name, "addr", "add", "172.31.254.2/30", "dev", "eth0")
        sh("ip", "-n", self.out.name, "link", "set", "eth0", "up")
        sh("ip", "-n", self.host.name, "route", "add", "default", "via", "172.31.254.2")
        self.sandboxes: list[str] = []

    def muslin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(tool("muslin"), "--host-netns", self.host.name, "--state-dir", self.state, *args, check=check)

    def sandbox(self, role: str):
        name = f"mt-sb{role}-{self.tag}"
        self.muslin("sandbox", "create", name)
        self.sandboxes.append(name)
        return name

    def connect(self, net: str, sb: str, *extra: str) -> dict:
        return json.loads(self.muslin("connect", net, sb, "-o", "json", *extra).stdout)

    def in_sb(self, sb: str, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", sb, *cmd, check=check)

    def ping(self, sb: str, addr: str) -> bool:
        return self.in_sb(sb, "ping", "-c", "1", "-W", "2", addr).returncode == 0

    def cleanup(self) -> None:
        for sb in self.sandboxes:
            self.muslin("sandbox", "rm", sb, check=False)
            sh("ip", "netns", "del", sb, check=False)


@pytest.fixture
def world(netns, state_dir):
    w = World(netns, state_dir)
    try:
        yield w
    finally:
        w.cleanup()


def ip_of(ep: dict) -> str:
    return ep["addresses"][0].split("/")[0]


def host_links(w: World) -> set[str]:
    return set(w.host.links()) - {"lo", "uplink"}


def test_bridge_ping_tcp_masquerade_and_clean_teardown(world):
    w = world
    subnet = random_subnet24()
    w.muslin("network", "create", "web", "--subnet", subnet)
    a, b = w.sandbox("a"), w.sandbox("b")
    ea, eb = w.connect("web", a), w.connect("web", b)
    assert ipaddress.ip_interface(ea["addresses"][0]).ip in ipaddress.ip_network(subnet)
    gw = str(next(ipaddress.ip_network(subnet).hosts()))
    assert w.ping(a, ip_of(eb)) and w.ping(b, ip_of(ea)) and w.ping(a, gw)
    # The sandbox interface carries the MAC the endpoint reports.
    link = w.in_sb(a, "ip", "-j", "link", "show", "eth0", check=True).stdout
    assert json.loads(link)[0]["address"] == ea["mac"]
    # TCP between sandboxes, and out through masquerade: the outside sees the host's address.
    with EchoServer(_ns(b)):
        assert tcp_echo(_ns(a), ip_of(eb), payload="ping") == f"{ip_of(ea)} ping"
    with EchoServer(w.out):
        assert tcp_echo(_ns(a), "172.31.254.2", payload="out") == "172.31.254.1 out"
    # ls / inspect in JSON.
    nets = json.loads(w.muslin("network", "ls", "-o", "json").stdout)
    assert [n["name"] for n in nets] == ["web"] and nets[0]["endpoints"] == 2
    assert len(json.loads(w.muslin("network", "inspect", "web", "-o", "json").stdout)["endpoints"]) == 2
    # Removing with endpoints is refused, with one line and no change.
    r = w.muslin("network", "rm", "web", check=False)
    assert r.returncode == 4 and "endpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # Teardown leaves nothing: links, nft table, store entries.
    w.muslin("disconnect", "web", a)
    w.muslin("disconnect", "web", a)  # idempotent
    w.muslin("sandbox", "rm", b)
    assert not w.ping(a, ip_of(eb))
    w.muslin("network", "rm", "web")
    assert host_links(w) == set()
    assert "muslin" not in w.host.run("nft", "list", "tables").stdout
    assert json.loads(w.muslin("network", "ls", "-o", "json").stdout) == []


def _ns(name):
    from nsutil import Netns

    ns = Netns.__new__(Netns)
    ns.name, ns.path = name, f"/run/netns/{name}"
    return ns


def test_requested_ip_mac_isolation_and_internal(world):
    w = world
    s1, s2, s3 = random_subnet24(), random_subnet24(), random_subnet24()
    w.muslin("network", "create", "one", "--subnet", s1)
    w.muslin("network", "create", "two", "--subnet", s2)
    w.muslin("network", "create", "priv", "--subnet", s3, "--internal")
    a, b, c = w.sandbox("a"), w.sandbox("b"), w.sandbox("c")
    want_ip = str(ipaddress.ip_network(s1)[77])
    ea = w.connect("one", a, "--ip", want_ip, "--mac", "02:42:ac:11:00:77")
    assert ip_of(ea) == want_ip and ea["mac"] == "02:42:ac:11:00:77"
    eb = w.connect("two", b)
    ec = w.connect("priv", c)
    # Isolation: no traffic between different Muslin bridge networks.
    assert not w.ping(a, ip_of(eb))
    # Internal: no way out, and no default route.
    assert not w.ping(c, "172.31.254.2")
    assert "default" not in w.in_sb(c, "ip", "route", check=True).stdout
    assert w.ping(a, "172.31.254.2")
    # Requesting an address in use: Conflict, one line, nothing changed.
    before = host_links(w)
    r = w.muslin("connect", "one", b, "--ip", want_ip, check=False)
    assert r.returncode == 4 and want_ip in r.stderr
    assert host_links(w) == before
    assert "eth1" not in w.in_sb(b, "ip", "link", check=True).stdout


def test_bad_input_one_line_and_no_change(world):
    w = world
    s = random_subnet24()
    w.muslin("network", "create", "base", "--subnet", s)
    before = host_links(w)
    cases = [
        (["network", "create", "dup", "--subnet", s], 4, "overlaps"),
        (["network", "create", "x", "--driver", "warp", "--subnet", random_subnet24()], 2, "unknown driver"),
        (["network", "create", "iv", "--driver", "ipvlan", "--subnet", random_subnet24()], 6,
         "ipvlan: ipvlan devices (kernel module ipvlan) are not available in this kernel"),
        (["network", "create", "vl", "--driver", "vlan", "--subnet", random_subnet24()], 6,
         "vlan: 802.1Q VLAN devices (kernel module 8021q) are not available in this kernel"),
        (["network", "create", "bad", "--subnet", "10.1.2.3/40"], 2, "bad address"),
        (["network", "create", "base", "--subnet", random_subnet24()], 4, "already exists"),
        (["network", "rm", "nope"], 3, "does not exist"),
        (["connect", "nope", "nosuchsb"], 3, "does not exist"),
    ]
    for args, code, words in cases:
        r = w.muslin(*args, check=False)
        assert r.returncode == code, (args, r.stderr)
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert host_links(w) == before


def test_exhausted_pool_leaves_nothing(world):
    w = world
    w.muslin("network", "create", "tiny", "--subnet", "10.250.9.0/30")
    a, b = w.sandbox("a"), w.sandbox("b")
    w.connect("tiny", a)  # .1 is the gateway, .2 the only address
    before = host_links(w)
    r = w.muslin("connect", "tiny", b, check=False)
    assert r.returncode == 5 and "no IP addresses available" in r.stderr
    assert host_links(w) == before
    assert "eth0" not in w.in_sb(b, "ip", "link", check=True).stdout


def test_macvlan_none_and_host_drivers(world):
    w = world
    # macvlan on the host's uplink: the sandbox sits on the outside segment itself.
    sh("ip", "-n", w.out.name, "addr", "add", "10.251.7.200/24", "dev", "eth0")
    w.muslin("network", "create", "mv", "--driver", "macvlan", "--parent", "uplink", "--subnet", "10.251.7.0/24",
             "--gateway", "10.251.7.200")
    m = w.sandbox("m")
    em = w.connect("mv", m)
    assert w.ping(m, "10.251.7.200")
    w.muslin("disconnect", "mv", m)
    assert "eth0" not in w.in_sb(m, "ip", "link", check=True).stdout
    w.muslin("network", "create", "nothing", "--driver", "none")
    n = w.sandbox("n")
    w.connect("nothing", n)
    assert w.ping(n, "127.0.0.1")
    assert len(w.in_sb(n, "ip", "-o", "link", check=True).stdout.splitlines()) == 1
    assert em["mac"]

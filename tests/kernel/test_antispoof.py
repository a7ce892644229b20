"""Anti-spoofing with real frames: a sandbox that takes another address or MAC, or sends forged
ARP replies and gratuitous ARP, reaches no one and poisons no neighbour cache; the same
attacks succeed on a network made with --no-spoofcheck (so the test proves the guard, not a
quirk of the attack). And the CNI config's `macspoofchk` is honoured."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import pytest
from nsutil import random_subnet24, sh, suffix, tool

pytestmark = pytest.mark.kernel

# Forged ARP from a raw socket: "CLAIMED is-at <our MAC>" to TARGET (reply) and to everyone
# (gratuitous request), five times each.
FORGE = r"""
import socket, sys, time
ifname, claimed, target_mac, target_ip = sys.argv[1:5]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
own = s.getsockname()[4]
mac = lambda t: bytes.fromhex(t.replace(":", ""))
ip = socket.inet_aton
def arp(dst, op, tha, tpa):
    return dst + own + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04" + op.to_bytes(2, "big") + own + ip(claimed) + tha + ip(tpa)
for _ in range(5):
    s.send(arp(mac(target_mac), 2, mac(target_mac), target_ip))
    s.send(arp(b"\xff" * 6, 1, b"\x00" * 6, claimed))
    time.sleep(0.05)
"""


class Net:
    def __init__(self, netns, state: Path, spoofcheck: bool) -> None:
        self.host = netns("host")
        self.state = str(state)
        self.tag = suffix()
        self.subnet = random_subnet24()
        self.prefix = self.subnet.rsplit(".", 1)[0]
        self.sandboxes: list[str] = []
        self.v6 = f"fd00:{random.randint(1, 0xfff):x}:{random.randint(1, 0xfff):x}::/64"
        self.muslin("network", "create", "guard", "--subnet", self.subnet, "--subnet", self.v6,
                    *([] if spoofcheck else ["--no-spoofcheck"]))
        self.eps = {r: self.sandbox(r) for r in ("a", "b", "c")}

    def muslin(self, *args: str, check: bool = True):
        return sh(tool("muslin"), "--host-netns", self.host.name, "--state-dir", self.state, *args, check=check)

    def sandbox(self, role: str) -> dict:
        name = f"mt-sp{role}-{self.tag}"
        self.muslin("sandbox", "create", name)
        self.sandboxes.append(name)
        ep = json.loads(self.muslin("connect", "guard", name, "-o", "json").stdout)
        ep["sandbox"] = name
        ep["ip"] = ep["addresses"][0].split("/")[0]
        ep["ip6"] = [x.split("/")[0] for x in ep["addresses"] if ":" in x][0]
        return ep

    def sb(self, role: str) -> str:
        return self.eps[role]["sandbox"]

    def run(self, role: str, *cmd: str, check: bool = False):
        return sh("ip", "netns", "exec", self.sb(role), *cmd, check=check)

    def ping(self, role: str, addr: str, *opts: str) -> bool:
        return self.run(role, "ping", "-c", "2", "-i", "0.3", "-W", "1", *opts, addr).returncode == 0

    def neigh_mac(self, ns: str, addr: str) -> str:
        out = sh("ip", "-n", ns, "neigh", "show", addr).stdout
        parts = out.split()
        return parts[parts.index("lladdr") + 1] if "lladdr" in parts else ""

    def cleanup(self) -> None:
        for sb in self.sandboxes:
            self.muslin("sandbox", "rm", sb, check=False)
            sh("ip", "netns", "del", sb, check=False)
        self.muslin("network", "rm", "guard", check=False)


@pytest.fixture(params=[True, False], ids=["spoofcheck", "no-spoofcheck"])
def net(request, netns, state_dir):
    n = Net(netns, state_dir, request.param)
    n.guarded = request.param
    try:
        yield n
    finally:
        n.cleanup()


def test_forged_arp_poisons_no_neighbour_cache(net):
    a, b, c = net.eps["a"], net.eps["b"], net.eps["c"]
    gw = f"{net.prefix}.1"
    assert net.ping("c", b["ip"]) and net.ping("a", c["ip"])
    assert net.host.ping(b["ip"])
    assert net.neigh_mac(net.sb("c"), b["ip"]) == b["mac"]
    assert net.neigh_mac(net.host.name, b["ip"]) == b["mac"]
    time.sleep(1.2)  # past the neighbour entries' locktime (1 s): a reply may now override them
    net.run("a", sys.executable, "-c", FORGE, "eth0", b["ip"], c["mac"], c["ip"], check=True)
    net.run("a", sys.executable, "-c", FORGE, "eth0", b["ip"], "ff:ff:ff:ff:ff:ff", gw, check=True)
    time.sleep(0.3)
    poisoned = {net.neigh_mac(net.sb("c"), b["ip"]), net.neigh_mac(net.host.name, b["ip"])} != {b["mac"]}
    assert poisoned == (not net.guarded), (net.neigh_mac(net.sb("c"), b["ip"]),
                                           net.neigh_mac(net.host.name, b["ip"]), a["mac"], b["mac"])
    if net.guarded:
        assert net.ping("c", b["ip"])  # b unharmed
        dropped = json.loads(net.muslin("policy", "stats", "-o", "json").stdout)["spoofing"]
        assert sum(dropped.values()) >= 10, dropped


def test_another_source_address_reaches_no_one(net):
    a, c = net.eps["a"], net.eps["c"]
    gw = f"{net.prefix}.1"
    other = f"{net.prefix}.{random.randint(200, 250)}"
    net.run("a", "ip", "addr", "add", f"{other}/24", "dev", "eth0", check=True)
    assert net.ping("a", c["ip"])  # its own address still works
    assert net.ping("a", c["ip"], "-I", other) == (not net.guarded)
    assert net.ping("a", gw, "-I", other) == (not net.guarded)
    # a takes the other address in place of its own
    net.run("a", "ip", "addr", "flush", "dev", "eth0", "scope", "global", check=True)
    net.run("a", "ip", "addr", "add", f"{other}/24", "dev", "eth0", check=True)
    assert net.ping("a", c["ip"]) == (not net.guarded)
    net.run("a", "ip", "addr", "flush", "dev", "eth0", "scope", "global", check=True)
    net.run("a", "ip", "addr", "add", a["addresses"][0], "dev", "eth0", check=True)
    assert net.ping("a", c["ip"])  # its own address back: reachable again


def test_another_mac_reaches_no_one(net):
    a, c = net.eps["a"], net.eps["c"]
    gw = f"{net.prefix}.1"
    fake = "02:%02x:%02x:%02x:%02x:%02x" % tuple(random.randint(0, 255) for _ in range(5))

    def flush() -> None:
        for r in ("a", "c"):
            net.run(r, "ip", "neigh", "flush", "all")
        sh("ip", "-n", net.host.name, "neigh", "flush", "all")

    net.run("a", "ip", "link", "set", "eth0", "address", fake, check=True)
    flush()
    assert net.ping("a", c["ip"]) == (not net.guarded)
    assert net.ping("a", gw) == (not net.guarded)
    net.run("a", "ip", "link", "set", "eth0", "address", a["mac"], check=True)
    flush()
    assert net.ping("a", c["ip"]) and net.ping("a", gw)


# A forged neighbour advertisement: "TARGET is at <our MAC>", override flag set, to DST and to
# all nodes (the kernel fills in the ICMPv6 checksum of a raw ICMPv6 socket).
FORGE_NA = r"""
import socket, struct, sys, time
ifname, target, dst = sys.argv[1:4]
mac = open(f"/sys/class/net/{ifname}/address").read().strip()
idx = socket.if_nametoindex(ifname)
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
na = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + socket.inet_pton(socket.AF_INET6, target) \
    + bytes([2, 1]) + bytes.fromhex(mac.replace(":", ""))
for _ in range(5):
    s.sendto(na, (dst, 0, 0, 0))
    s.sendto(na, ("ff02::1", 0, 0, idx))
    time.sleep(0.05)
"""


def test_forged_neighbour_advertisements_poison_no_cache(net):
    a, b, c = net.eps["a"], net.eps["b"], net.eps["c"]
    assert net.run("c", "ping", "-6", "-c", "1", "-W", "2", b["ip6"]).returncode == 0
    assert net.neigh_mac(net.sb("c"), b["ip6"]) == b["mac"]
    time.sleep(1.2)  # past the entry's locktime
    net.run("a", sys.executable, "-c", FORGE_NA, "eth0", b["ip6"], c["ip6"], check=True)
    time.sleep(0.3)
    seen = net.neigh_mac(net.sb("c"), b["ip6"])
    assert (seen != b["mac"]) == (not net.guarded), (seen, a["mac"], b["mac"])


# -- CNI: macspoofchk from the config -----------------------------------------------------------

@pytest.mark.parametrize("macspoofchk", [True, False, None])
def test_cni_macspoofchk_is_honoured(netns, tmp_path, macspoofchk):
    from test_cni_conformance import Cni

    host = netns("host")
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    for name in ("muslin-cni", "muslin-ipam"):
        (plugin_dir / name).symlink_to(tool(name))
    state = tmp_path / "state"
    state.mkdir()
    cni = Cni(host, state, plugin_dir, f"10.{random.randint(100, 250)}.{random.randint(0, 255)}")
    extra = {} if macspoofchk is None else {"macspoofchk": macspoofchk}
    conflist = {"cniVersion": "1.1.0", "name": "n" + suffix(),
                "plugins": [{**cni.conf("1.1.0"), **extra}]}
    conf = {**conflist["plugins"][0], "name": conflist["name"]}
    c1, c2 = netns("c1"), netns("c2")
    r1, r2 = cni.add(conf, c1), cni.add(conf, c2)
    ip2 = r2["ips"][0]["address"].split("/")[0]
    mac1 = next(i["mac"] for i in r1["interfaces"] if i.get("sandbox"))
    assert c1.ping(ip2)
    sh("ip", "-n", c1.name, "link", "set", "eth0", "address", "02:00:00:aa:bb:cc")
    for ns in (c1, c2, host):
        sh("ip", "-n", ns.name, "neigh", "flush", "all")
    guarded = macspoofchk is not False  # Muslin: on unless the config turns it off
    assert c1.ping(ip2) == (not guarded)
    sh("ip", "-n", c1.name, "link", "set", "eth0", "address", mac1)
    for ns in (c1, c2, host):
        sh("ip", "-n", ns.name, "neigh", "flush", "all")
    assert c1.ping(ip2)
    for c, r in ((c1, r1), (c2, r2)):
        cni.ok("DEL", {**conf, "prevResult": r}, c)
    cni.assert_clean()

"""The hand-encoded rtnetlink messages of the hot path, checked against what iproute2 reads
back from the kernel: a bridge (MAC, MTU, alias), a veth made in one message (peer in another
namespace, MACs, master, up, hairpin), a sandbox configured in one batch (ARP notify, addresses,
routes, an existing default route kept), deleting a group of links in one message."""

from __future__ import annotations

import ipaddress
import json
import sys

import pytest
from nsutil import sh

from muslin.dataplane import links
from muslin.model.kernel import SandboxConfig
from muslin.model.types import Route

pytestmark = pytest.mark.kernel


def jlink(ns, name: str) -> dict:
    return json.loads(sh("ip", "-n", ns.name, "-d", "-j", "link", "show", name).stdout)[0]


def test_bridge_veth_sandbox_and_group_delete(netns):
    h, c = netns("h"), netns("c")
    script = f"""
import ipaddress
from muslin.dataplane import links
from muslin.dataplane import rtnl
from muslin.model.kernel import SandboxConfig
from muslin.model.types import Route
h = links.Host()
h.create_bridge("tbr0", 1400, "02:11:22:33:44:55", "muslin:t")
h.add_address("tbr0", ipaddress.ip_interface("10.91.0.1/24"))
info = h.create_veth("tv0", "eth0", "{c.path}", 1400, "02:bb:00:00:00:02", "tbr0", True, "02:aa:00:00:00:01")
assert info.name == "tv0" and info.mac == "02:aa:00:00:00:01" and info.index, info
print(h.add_address("tbr0", ipaddress.ip_interface("10.91.0.1/24")))
"""
    r = h.run(sys.executable, "-c", script)
    assert r.stdout.strip() == "False"  # the same address twice: already there
    br = jlink(h, "tbr0")
    assert br["address"] == "02:11:22:33:44:55" and br["mtu"] == 1400 and br["ifalias"] == "muslin:t"
    v = jlink(h, "tv0")
    assert v["address"] == "02:aa:00:00:00:01" and v["master"] == "tbr0" and "UP" in v["flags"]
    assert v["linkinfo"]["info_slave_data"]["hairpin"] is True
    e = jlink(c, "eth0")
    assert e["address"] == "02:bb:00:00:00:02" and e["mtu"] == 1400
    # the sandbox side, in one batch; a default route it already has stays
    c.run("ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1")
    c.run("ip", "addr", "add", "10.92.0.2/24", "dev", "other0")
    c.run("ip", "link", "set", "other0", "up")
    c.run("ip", "route", "add", "default", "via", "10.92.0.1")
    res = links.sandbox_setup(c.path, SandboxConfig("eth0", (ipaddress.ip_interface("10.91.0.2/24"),), (
        Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.91.0.1")),
        Route(ipaddress.ip_network("10.200.0.0/16"), ipaddress.ip_address("10.91.0.1")))))
    assert res.mac == "02:bb:00:00:00:02" and [str(r.dst) for r in res.routes] == ["10.200.0.0/16"]
    assert c.run("cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify").stdout.strip() == "1"
    assert "default via 10.92.0.1" in c.run("ip", "route").stdout
    assert c.ping("10.91.0.1")
    res = links.sandbox_setup(c.path, SandboxConfig("other1", (ipaddress.ip_interface("10.93.0.2/24"),), (
        Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.93.0.1")),), replace_default=True))
    assert "default via 10.93.0.1" in c.run("ip", "route").stdout and len(res.routes) == 1
    # many links deleted by group, in one message
    script = """
from muslin.dataplane import rtnl
s = rtnl.Socket()
for i in range(5):
    s.batch([rtnl.new_veth(f"tg{i}", f"tgp{i}", None, 1500)])
    s.batch([rtnl.set_link(s.link(f"tg{i}").index, group=4242)])
print(s.delete_link(group=4242), s.delete_link(group=4242), [l.name for l in s.links() if l.name.startswith("tg")])
"""
    assert h.run(sys.executable, "-c", script).stdout.split() == ["True", "False", "[]"]


def test_a_macvlan_on_loopback_is_invalid_not_unavailable(netns):
    h, c = netns("h"), netns("c")
    script = f"""
from muslin.dataplane import links
from muslin.model.errors import MuslinError
try:
    links.Host().create_macvlan("mv0", "lo", "bridge", "{c.path}", 0)
except MuslinError as e:
    print(type(e).__name__, e)
"""
    out = h.run(sys.executable, "-c", script).stdout
    assert out.startswith("Invalid ") and "Ethernet device" in out, out

"""Dual-stack and IPv6-only cluster networks, with real packets between lab hosts.

For each backend (vxlan, host-gw, bgp, vxlan over an IPv6 underlay, wireguard) a 3-host lab
with an IPv4 and an IPv6 cluster CIDR: every host leases a /24 and a /64 together; sandboxes
on the three hosts reach each other by ping and ping6, TCP over IPv6 works, and a ping6 with
DF of the largest size the network's MTU allows gets through (one byte more is refused).
`muslin-cni` on a host returns both addresses. An IPv6-only network works too. Bad input
(a per-host prefix larger than the CIDR, a family change after hosts joined) is one clear
error and nothing changes."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from labutil import lab_cli, lab_up
from nsutil import EchoServer, ExistingNetns, Netns, suffix, tcp_echo, tool, wait_until

from muslin.lab import core

pytestmark = pytest.mark.skipif(not Path("/proc/sys/net/ipv6").exists(), reason="this kernel has no IPv6")

CIDR6 = "fd00:10::/48"


def sandboxes(name: str, hosts: list[str]) -> dict[str, dict[str, str]]:
    for h in hosts:
        r = lab_cli("sandbox", name, h, f"s{h}")
        assert r.returncode == 0, r.stderr
    return {h: core.LabState.load(name).sandboxes[f"s{h}"] for h in hosts}


def ip_of(sb: dict[str, str], key: str) -> str:
    return sb[key].split("/")[0]


def mtu_of(ns: Netns) -> int:
    return int(ns.run("cat", "/sys/class/net/eth0/mtu").stdout)


def check_both_families(name: str) -> None:
    sbs = sandboxes(name, ["h1", "h2", "h3"])
    for h, sb in sbs.items():
        assert ipaddress.ip_interface(sb["address"]).version == 4
        assert ipaddress.ip_interface(sb["address6"]).ip in ipaddress.ip_network(CIDR6), sb
    st = core.LabState.load(name)
    s1 = ExistingNetns(sbs["h1"]["netns"])
    for h in ("h2", "h3"):
        assert wait_until(lambda: s1.ping(ip_of(sbs[h], "address")), 30), f"ping h1 -> {h}"
        assert wait_until(lambda: s1.ping(ip_of(sbs[h], "address6")), 30), f"ping6 h1 -> {h}"
    s3 = ExistingNetns(sbs["h3"]["netns"])
    assert s3.ping(ip_of(sbs["h2"], "address6"))
    # TCP over IPv6, the server seeing the client's own IPv6 address (no NAT between hosts)
    with EchoServer(ExistingNetns(sbs["h2"]["netns"]), "::", 7007):
        got = tcp_echo(s1, ip_of(sbs["h2"], "address6"), 7007, "six", wait=10)
    assert got == f"{ip_of(sbs['h1'], 'address6')} six", got
    # the largest IPv6 packet the MTU allows, with DF (IPv6 never fragments on the way)
    mtu = mtu_of(s1)
    assert s1.ping(ip_of(sbs["h2"], "address6"), size=mtu - 48), f"DF ping6 of {mtu} bytes"
    assert not s1.ping(ip_of(sbs["h2"], "address6"), size=mtu - 47)
    for h in st.hosts:  # every host holds a subnet of each family, disjoint from the others'
        s = core.host_status(st, h)
        assert ipaddress.ip_network(s["subnet6"]).prefixlen == 64 and ipaddress.ip_network(s["subnet"]).version == 4
    assert len({core.host_status(st, h)["subnet6"] for h in st.hosts}) == 3


BACKENDS = [
    pytest.param(("vxlan",), id="vxlan"),
    pytest.param(("host-gw",), id="host-gw"),
    pytest.param(("bgp",), id="bgp"),
    pytest.param(("vxlan", "--option", "underlay=ipv6"), id="vxlan-over-ipv6"),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dual_stack_cluster_network_carries_both_families(tmp_path, backend):
    if backend[0] == "bgp" and not shutil.which("bird"):
        pytest.skip("BIRD 2 is not installed")
    with lab_up(tmp_path, "d", "--hosts", "3", "--backend", *backend, "--cidr6", CIDR6, "--lease-ttl", "5") as name:
        check_both_families(name)
        st = core.LabState.load(name)
        h1 = core.ns_host(name, "h1")
        sub6 = core.host_status(st, "h2")["subnet6"]
        route = subprocess.run(["ip", "-n", h1, "-6", "route", "show", sub6], capture_output=True, text=True).stdout
        want = {"vxlan": "dev mx-net0", "host-gw": f"via {core.host_ip6('h2')} dev eth0", "bgp": "proto bird"}
        assert want[backend[0]] in route, route  # the IPv6 route is the backend's own
        if "underlay=ipv6" in backend:  # the tunnel itself runs over the IPv6 underlay
            fdb = subprocess.run(["bridge", "-n", h1, "fdb", "show", "dev", "mx-net0"], capture_output=True,
                                 text=True).stdout
            assert f"dst {core.host_ip6('h2')}" in fdb and "dst 10.250." not in fdb, fdb
        if backend[0] == "vxlan":  # no IPv6 address of its own on the VXLAN device (no link-local: nothing flooded)
            st = core.LabState.load(name)
            r = subprocess.run(["ip", "-n", core.ns_host(name, "h1"), "-6", "-o", "addr", "show", "dev", "mx-net0"],
                               capture_output=True, text=True)
            assert r.returncode == 0 and not r.stdout.strip(), r.stdout
            assert st.settings["ipv6"]


def test_wireguard_carries_both_families(tmp_path):
    if not (shutil.which("wg") and (shutil.which("wireguard-go") or Path("/sys/module/wireguard").exists())):
        pytest.skip("wireguard-tools or wireguard-go is not installed")
    with lab_up(tmp_path, "w", "--hosts", "3", "--backend", "wireguard", "--cidr6", CIDR6, "--lease-ttl", "5") as name:
        check_both_families(name)


def test_an_ipv6_only_cluster_network(tmp_path):
    with lab_up(tmp_path, "o", "--hosts", "2", "--cidr", CIDR6, "--host-prefix", "64", "--lease-ttl", "5") as name:
        sbs = sandboxes(name, ["h1", "h2"])
        for sb in sbs.values():
            assert ipaddress.ip_interface(sb["address"]).version == 6 and "address6" in sb
        s1 = ExistingNetns(sbs["h1"]["netns"])
        assert wait_until(lambda: s1.ping(ip_of(sbs["h2"], "address")), 30)
        with EchoServer(ExistingNetns(sbs["h2"]["netns"]), "::", 7007):
            got = tcp_echo(s1, ip_of(sbs["h2"], "address"), 7007, "only", wait=10)
        assert got == f"{ip_of(sbs['h1'], 'address')} only", got
        r = subprocess.run(["ip", "-n", core.ns_host(name, "h1"), "-4", "-o", "addr", "show", "dev", "mx-net0"],
                           capture_output=True, text=True)
        assert not r.stdout.strip(), r.stdout  # no IPv4 VTEP address in an IPv6-only network


def test_muslin_cni_returns_both_addresses_and_the_pods_reach_each_other(tmp_path):
    with lab_up(tmp_path, "c", "--hosts", "2", "--cidr6", CIDR6, "--lease-ttl", "5") as name:
        st = core.LabState.load(name)
        pods = {h: Netns(f"mt-pod{h}-{suffix()}") for h in ("h1", "h2")}
        cids = {h: f"pod{h}{suffix()}" for h in pods}

        def cni(host: str, command: str) -> subprocess.CompletedProcess:
            conf = json.dumps({"cniVersion": "1.0.0", "name": st.network, "type": "muslin-cni",
                               "network": st.network, "dataDir": str(st.host_dir(host))})
            env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"CNI_COMMAND={command}",
                   f"CNI_CONTAINERID={cids[host]}", "CNI_IFNAME=eth0", f"CNI_NETNS={pods[host].path}",
                   "CNI_PATH=/usr/lib/cni", "MUSLIN_AGENT_SOCKET=/nonexistent.sock"]
            return subprocess.run(["ip", "netns", "exec", core.ns_host(name, host), *env, tool("muslin-cni")],
                                  input=conf, capture_output=True, text=True, timeout=60)

        try:
            addrs = {}
            for h in pods:
                r = cni(h, "ADD")
                assert r.returncode == 0, r.stdout + r.stderr
                ips = [ipaddress.ip_interface(i["address"]) for i in json.loads(r.stdout)["ips"]]
                assert sorted(i.version for i in ips) == [4, 6], ips
                s = core.host_status(st, h)
                assert {str(i.network) for i in ips} == {s["subnet"], s["subnet6"]}
                addrs[h] = ips
            for i in addrs["h2"]:
                assert wait_until(lambda: pods["h1"].ping(str(i.ip)), 30), f"h1 pod -> {i}"
        finally:
            for h in pods:
                r = cni(h, "DEL")
                assert r.returncode == 0, r.stdout + r.stderr
                pods[h].delete()


def made_none(name: str) -> bool:
    """No namespace of lab `name` exists (the machine is shared: only our own names count)."""
    return not [n for n in core.netns_list() if n.startswith(f"mlab-{name}-")]


def test_bad_dual_stack_input_is_one_clear_error_and_changes_nothing(tmp_path):
    cases = [
        (["--cidr6", CIDR6, "--host-prefix6", "40"], "IPv6 host prefix /40 must be between /48"),
        (["--cidr6", "10.9.0.0/16"], "is not an IPv6 network"),
        (["--cidr", "fd00:9::/48", "--host-prefix", "64", "--cidr6", CIDR6], "must be IPv4 when cidr6 is given"),
        (["--cidr6", "fd00:10::1/48"], "has host bits set"),
        (["--cidr6", "fd00:10::/120", "--host-prefix6", "120", "--hosts", "3"],
         "cluster CIDR fd00:10::/120 holds only 1 /120 host subnets"),
    ]
    for args, msg in cases:
        name = "bad" + suffix()
        r = lab_cli("up", name, "--hosts", "1", *args)
        assert r.returncode != 0 and msg in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert made_none(name) and not (tmp_path / f"{name}.json").exists()


def test_a_cluster_network_cannot_change_family_once_it_exists(tmp_path):
    """`muslin cluster init` of the same network with IPv6 added (or removed) is refused,
    naming the difference; the stored config and the hosts' leases stay as they were."""
    with lab_up(tmp_path, "f", "--hosts", "1", "--lease-ttl", "5") as name:
        st = core.LabState.load(name)
        before = core.host_status(st, "h1")["subnet"]
        r = subprocess.run(["ip", "netns", "exec", core.ns_host(name, "h1"), tool("muslin"), "cluster", "init",
                            "--cluster-store", st.store_url, "--network", st.network, "--lease-ttl", "5",
                            "--cidr6", CIDR6], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "already exists with another config" in r.stderr, r.stderr
        assert "cidr6" in r.stderr and "Traceback" not in r.stderr, r.stderr
        s = core.host_status(st, "h1")
        assert s["subnet"] == before and not s.get("subnet6")


def test_a_cluster_cidr_overlapping_the_underlay_is_refused(tmp_path):
    for args in (["--cidr6", str(core.UNDERLAY6.supernet(16))], ["--cidr", "10.250.0.0/16"]):
        name = "ov" + suffix()
        r = lab_cli("up", name, "--hosts", "1", *args)
        assert r.returncode != 0 and "overlaps the underlay subnet" in r.stderr, r.stderr
        assert made_none(name)


DENY_X = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""
FROM_Y = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]
"""


def test_policy_across_hosts_treats_both_families_alike(tmp_path):
    """x/a on h1 isolated for ingress: y/b and z/c on h2 reach it over neither family; a policy
    allowing namespace y lets y/b in over IPv4 and IPv6, z/c still over neither."""
    with lab_up(tmp_path, "p", "--hosts", "2", "--cidr6", CIDR6, "--lease-ttl", "5") as name:
        for host, sb, ns in (("h1", "xa", "x"), ("h2", "yb", "y"), ("h2", "zc", "z")):
            r = lab_cli("sandbox", name, host, sb, "--namespace", ns, "--label", f"pod={sb[1]}")
            assert r.returncode == 0, r.stderr
        st = core.LabState.load(name)
        sbs = st.sandboxes
        xa, yb, zc = (ExistingNetns(sbs[s]["netns"]) for s in ("xa", "yb", "zc"))
        targets = [ip_of(sbs["xa"], "address"), ip_of(sbs["xa"], "address6")]

        def policy(text: str) -> None:
            r = subprocess.run(["ip", "netns", "exec", core.ns_host(name, "h1"), tool("muslin"), "--state-dir",
                                str(st.host_dir("h1")), "policy", "--cluster-store", st.store_url, "apply", "-f", "-"],
                               input=text, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr

        def reach(src: Netns) -> list[bool]:
            return [tcp_echo(src, t, 7007, "p") is not None for t in targets]

        with EchoServer(xa, "::", 7007):
            assert wait_until(lambda: reach(yb) == [True, True] and reach(zc) == [True, True], 30), "before any policy"
            policy(DENY_X)
            assert wait_until(lambda: reach(yb) == [False, False] and reach(zc) == [False, False], 30), \
                (reach(yb), reach(zc))
            policy(FROM_Y)
            assert wait_until(lambda: reach(yb) == [True, True], 30), reach(yb)
            assert reach(zc) == [False, False]

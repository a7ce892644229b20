"""Bandwidth limits and published-port conflicts on the fake kernel (no root): every step of
an attach with limits fails in turn and leaves nothing; a detach takes the ifb and the
qdiscs away (also after any failure, and without a record); the reference plugin's rules
for the four keys; a host port published twice is a Conflict before anything changes."""

from __future__ import annotations

import ipaddress
import json

import pytest
from test_faults import each_failure, each_teardown_failure, net, sandbox

from muslin.cli.main import parse_bandwidth, parse_publish
from muslin.cni.types import CniError, parse_request
from muslin.control import sandboxes
from muslin.model import names
from muslin.model.errors import Conflict, Invalid
from muslin.model.ports import clash, families
from muslin.model.rates import check_bandwidth, default_burst, parse_bits
from muslin.model.types import Bandwidth, Endpoint, PortMapping

pytestmark = pytest.mark.timeout(120)

BW = Bandwidth(10_000_000, 1_000_000, 20_000_000, 2_000_000)


def _connected(w, bw=BW, ports=()):
    w.m.create_network(net())
    sandbox(w, "a")
    return sandboxes.connect(w.m, "n1", "a", bandwidth=bw, ports=ports)


def test_connect_with_limits_each_failure_leaves_nothing(tmp_path):
    def prepare(w):
        w.m.create_network(net())
        sandbox(w, "a")

    n = each_failure(tmp_path, prepare, lambda w: sandboxes.connect(w.m, "n1", "a", bandwidth=BW,
                                                                     ports=(PortMapping(8080, 80),)))
    assert n >= 4  # tbf, ifb, its tbf, the redirect (besides the veth, the firewall, the record)


def test_limits_are_made_and_go_with_the_endpoint(tmp_path):
    from faultkit import World

    w = World(tmp_path / "s")
    before = None
    w.m.create_network(net())
    sandbox(w, "a")
    before = w.snapshot()
    ep = sandboxes.connect(w.m, "n1", "a", bandwidth=BW)
    host = w.kernel.namespaces[""]
    ifb = names.ifb_name("n1", ep.endpoint_id)
    assert host[ep.host_ifname].tbf == (10_000_000, 1_000_000)
    assert host[ep.host_ifname].redirect == ifb
    assert host[ifb].kind == "ifb" and host[ifb].tbf == (20_000_000, 2_000_000)
    # the record keeps the limits: the detach needs nothing else
    assert Endpoint.from_dict(ep.to_dict()).bandwidth == BW
    sandboxes.disconnect(w.m, "n1", "a")
    assert w.snapshot()["kernel"] == before["kernel"]  # (the IPAM's round-robin cursor moved)


def test_only_one_way(tmp_path):
    from faultkit import World

    w = World(tmp_path / "s")
    ep = _connected(w, Bandwidth(ingress_rate=8000, ingress_burst=80000))
    host = w.kernel.namespaces[""]
    assert host[ep.host_ifname].tbf == (8000, 80000) and not host[ep.host_ifname].redirect
    assert names.ifb_name("n1", ep.endpoint_id) not in host


def test_disconnect_with_limits_is_idempotent_after_any_failure(tmp_path):
    each_teardown_failure(tmp_path, _connected, lambda w: sandboxes.disconnect(w.m, "n1", "a"))


def test_a_crashed_attach_s_ifb_goes_with_the_detach(tmp_path):
    from faultkit import World

    w = World(tmp_path / "s")
    w.m.create_network(net())
    ifb = names.ifb_name("n1", "c9/eth0")
    w.kernel.create_ifb(ifb)  # left by an attach that crashed before its record
    w.m.detach("n1", "c9/eth0")
    assert ifb not in w.kernel.namespaces[""]


def test_limits_need_a_bridged_network(tmp_path):
    from faultkit import World
    from muslin.model.types import IPRange, Network

    w = World(tmp_path / "s")
    w.kernel.add_link("", "eth1", "veth", up=True)
    w.m.create_network(Network("mv", driver="macvlan", parent="eth1",
                               range_sets=((IPRange(ipaddress.ip_network("10.61.0.0/24")),),)))
    sandbox(w, "a")
    before = w.snapshot()
    with pytest.raises(Conflict, match="cannot limit bandwidth"):
        sandboxes.connect(w.m, "mv", "a", bandwidth=BW)
    assert w.snapshot() == before


# -------------------------------------------------------------------- published-port conflicts

def test_second_mapping_of_a_host_port_is_a_conflict_and_changes_nothing(tmp_path):
    from faultkit import World

    w = World(tmp_path / "s")
    _connected(w, None, (PortMapping(8080, 80),))
    w.m.create_network(net("n2", ipaddress.ip_network("10.62.0.0/24")))
    sandbox(w, "b")
    before = w.snapshot()
    for p in (PortMapping(8080, 81), PortMapping(8080, 80, host_ip="127.0.0.1")):
        with pytest.raises(Conflict, match=r"already published by endpoint a/eth0 on network 'n1'"):
            sandboxes.connect(w.m, "n2", "b", ports=(p,))
        assert w.snapshot() == before
    with pytest.raises(Conflict, match="published twice by this request"):
        sandboxes.connect(w.m, "n2", "b", ports=(PortMapping(9090, 1), PortMapping(9090, 2)))
    assert w.snapshot() == before
    with pytest.raises(Invalid, match=r"host port \[::1\]:8082/tcp: network 'n2' has no IPv6 address"):
        sandboxes.connect(w.m, "n2", "b", ports=(PortMapping(8082, 80, host_ip="::1"),))
    assert w.snapshot() == before
    # another protocol, another port, or another host address beside one: fine
    sandboxes.connect(w.m, "n2", "b", ports=(PortMapping(8080, 80, "udp"), PortMapping(8081, 80)))


def test_clash_rules():
    v4 = {4}
    assert clash(PortMapping(1, 2), v4, PortMapping(1, 3), v4)
    assert clash(PortMapping(1, 2, host_ip="10.0.0.1"), v4, PortMapping(1, 3), v4)
    assert clash(PortMapping(1, 2, host_ip="10.0.0.1"), v4, PortMapping(1, 3, host_ip="10.0.0.1"), v4)
    assert not clash(PortMapping(1, 2, host_ip="10.0.0.1"), v4, PortMapping(1, 3, host_ip="10.0.0.2"), v4)
    assert not clash(PortMapping(1, 2), v4, PortMapping(1, 2, "udp"), v4)
    assert not clash(PortMapping(1, 2), {6}, PortMapping(1, 2), v4)  # v6-only and v4-only containers
    assert families(PortMapping(1, 2, host_ip="::1"), {4, 6}) == {6}
    assert families(PortMapping(1, 2, host_ip="0.0.0.0"), {4}) == {4}


# ----------------------------------------------------------------------------- the rules

def test_reference_rules_for_the_four_keys():
    check_bandwidth(BW)
    check_bandwidth(Bandwidth())
    for bad, msg in ((Bandwidth(ingress_rate=1), "ingressRate is set without ingressBurst"),
                     (Bandwidth(egress_burst=1), "egressBurst is set without egressRate"),
                     (Bandwidth(ingress_rate=-1, ingress_burst=1), "non-negative"),
                     (Bandwidth(egress_rate=1, egress_burst=8 * 2**32), "4 GiB")):
        with pytest.raises(Invalid, match=msg):
            check_bandwidth(bad)


def test_cli_words():
    assert parse_bits("10mbit", "--x") == 10_000_000
    assert parse_bits("1.5gbit", "--x") == 1_500_000_000
    assert parse_bits("512k", "--x") == 512_000 and parse_bits("800", "--x") == 800
    for bad in ("10 mbps", "ten", "0", "-1mbit", ""):
        with pytest.raises(Invalid):
            parse_bits(bad, "--ingress-rate")
    bw = parse_bandwidth("10mbit", "20mbit", "", "1mbit")
    assert bw == Bandwidth(10_000_000, default_burst(10_000_000), 20_000_000, 1_000_000)
    assert default_burst(10_000_000) == 8 * 64 * 1024 and default_burst(10**10) == 10**8
    assert parse_bandwidth("", "", "", "") is None
    with pytest.raises(Invalid, match="--egress-burst needs --egress-rate"):
        parse_bandwidth("10mbit", "", "", "1mbit")


def test_cli_publish_words():
    assert parse_publish(("8080:80", "127.0.0.1:53:53/udp", "[::1]:8443:443/TCP")) == (
        PortMapping(8080, 80), PortMapping(53, 53, "udp", "127.0.0.1"), PortMapping(8443, 443, "tcp", "::1"))
    for bad, msg in (("80", "use"), ("0:80", "host port 0"), ("8080:70000", "container port 70000"),
                     ("8080:80/icmp", "protocol 'icmp'"), ("x.y:8080:80", "not an IP address"), ("a:b", "use")):
        with pytest.raises(Invalid, match=msg):
            parse_publish((bad,))


def _req(conf_extra, runtime=None):
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "muslin-cni",
            "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": "10.9.0.0/24"}]]}, **conf_extra}
    if runtime is not None:
        conf["runtimeConfig"] = {"bandwidth": runtime}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/x",
           "CNI_PATH": "/x"}
    return parse_request(env, json.dumps(conf).encode())


def test_cni_keys_and_capability():
    assert _req({}).bandwidth is None
    assert _req({"ingressRate": 1000, "ingressBurst": 2000}).bandwidth == Bandwidth(1000, 2000)
    # the capability wins over the keys, as in the reference plugin
    got = _req({"ingressRate": 1000, "ingressBurst": 2000}, {"egressRate": 5, "egressBurst": 6}).bandwidth
    assert got == Bandwidth(0, 0, 5, 6)
    for extra, runtime, msg in (({"ingressRate": 1000}, None, "ingressRate is set without ingressBurst"),
                                ({}, {"egressBurst": 10}, "runtimeConfig.bandwidth.egressBurst is set without"),
                                ({"egressRate": -5, "egressBurst": 1}, None, "non-negative"),
                                ({"egressRate": "5", "egressBurst": 1}, None, "egressRate")):
        with pytest.raises(CniError, match=msg) as e:
            _req(extra, runtime)
        assert e.value.cni_code in (2, 7)


def test_check_finds_a_limit_removed_by_hand(tmp_path):
    from faultkit import World
    from muslin.model.errors import NotFound

    w = World(tmp_path / "s")
    ep = _connected(w)
    w.m.check("n1", ep.endpoint_id)
    ifb = names.ifb_name("n1", ep.endpoint_id)
    w.kernel.namespaces[""][ifb].tbf = None  # someone removed the egress tbf
    with pytest.raises(NotFound, match="egress limit through"):
        w.m.check("n1", ep.endpoint_id)
    w.kernel.namespaces[""][ep.host_ifname].tbf = None
    with pytest.raises(NotFound, match="ingress limit on"):
        w.m.check("n1", ep.endpoint_id)

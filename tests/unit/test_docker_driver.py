"""NetworkDriver handlers on the control layer over the fake kernel: mapping, idempotency, ports,
orphans (no root)."""

from __future__ import annotations

import ipaddress

import pytest

from muslin.control.service import Muslin
from muslin.dataplane.fake import FakeKernel
from muslin.docker import types as T
from muslin.docker.driver import DockerDriver
from muslin.model.errors import Invalid
from muslin.model.types import IPRange, Network
from muslin.store.memory import MemoryStore

NID, NID2, EID = "a" * 64, "c" * 64, "b" * 64


class World:
    """The real control layer on an in-memory store and the fake kernel."""

    def __init__(self, tmp):
        self.kernel = FakeKernel()
        self.m = Muslin(MemoryStore(), tmp, kernel=lambda: self.kernel)

    def nets(self):
        return {n.name: n for n in self.m.list_networks()}

    def eps(self):
        return {(e.network, e.endpoint_id): e for e in self.m.endpoints()}


def create_net(d, nid=NID, generic=None, internal=False):
    opts = {"com.docker.network.generic": generic or {}}
    if internal:
        opts["com.docker.network.internal"] = True
    return d.create_network(T.CreateNetworkRequest.from_json({
        "NetworkID": nid, "Options": opts,
        "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}], "IPv6Data": None}))


def create_ep(d, mac=""):
    return d.create_endpoint(T.CreateEndpointRequest.from_json({
        "NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.9.0.2/24", "MacAddress": mac}})).to_json()


@pytest.fixture
def w(tmp_path):
    return World(tmp_path)


@pytest.fixture
def d(w):
    return DockerDriver(w.m, link_exists=w.m.link_exists)


def test_network_and_endpoint_lifecycle_is_idempotent(d, w):
    before = w.kernel.snapshot()
    create_net(d, generic={"mtu": "1400"})
    create_net(d, generic={"mtu": "1400"})
    net = w.nets()["docker-aaaaaaaaaaaa"]
    assert net.mtu == 1400 and net.origin == "docker" and net.hairpin
    assert w.kernel.link(net.bridge).mtu == 1400
    first = create_ep(d)
    assert create_ep(d) == first
    ep = w.eps()[("docker-aaaaaaaaaaaa", EID)]
    assert first == {"Interface": {"MacAddress": ep.mac}}
    assert w.kernel.link(ep.peer).mac == ep.mac and w.kernel.link(ep.host_ifname).master
    j = d.join(T.JoinRequest.from_json({"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x"})).to_json()
    assert j == {"InterfaceName": {"SrcName": ep.peer, "DstPrefix": "eth"}, "Gateway": "10.9.0.1",
                 "DisableGatewayService": True}
    req = T.EndpointRequest(NID, EID)
    assert d.endpoint_oper_info(req).to_json()["Value"]["muslin.host_ifname"] == ep.host_ifname
    d.leave(req)
    d.leave(req)
    d.delete_endpoint(req)
    d.delete_endpoint(req)
    assert not w.eps()
    d.delete_network(T.NetworkRequest(NID))
    d.delete_network(T.NetworkRequest(NID))
    assert not w.nets() and d.docker_networks() == {}
    after = w.kernel.snapshot()
    assert after.pop("sysctl")["/proc/sys/net/ipv4/ip_forward"] == "1"  # stays on, as Docker leaves it
    before.pop("sysctl")
    assert after == before


def test_mac_given_by_docker_is_not_returned(d):
    create_net(d)
    assert create_ep(d, mac="02:11:22:33:44:55") == {}


def test_internal_network_has_no_gateway(d):
    create_net(d, internal=True)
    create_ep(d)
    j = d.join(T.JoinRequest(NID, EID, "/x")).to_json()
    assert "Gateway" not in j


def test_bad_options_and_join_mismatch(d, w):
    with pytest.raises(Invalid, match="'bogus'"):
        create_net(d, generic={"bogus": "1"})
    create_net(d, generic={"muslin.network": "shared"})
    with pytest.raises(Invalid, match="cannot be set when joining"):
        create_net(d, NID2, generic={"muslin.network": "shared", "mtu": "1400"})
    create_net(d, NID2, generic={"muslin.network": "shared"})
    assert d.docker_networks()[NID2]["joined"] is True
    d.delete_network(T.NetworkRequest(NID))  # the joiner inherits the network
    assert "shared" in w.nets() and d.docker_networks()[NID2]["joined"] is False
    d.delete_network(T.NetworkRequest(NID2))
    assert "shared" not in w.nets()


def test_ports_programmed_once_and_revoked(d, w):
    create_net(d)
    create_ep(d)
    opts = {T.PORTMAP: [{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8080}, {"Proto": 17, "Port": 53}]}
    req = T.ProgramExternalConnectivityRequest(NID, EID, opts)
    d.program_external_connectivity(req)
    ep = w.eps()[("docker-aaaaaaaaaaaa", EID)]
    ports = ep.ports
    assert len(w.kernel.table[1].ports) == 2 and w.kernel.namespaces[""][ep.host_ifname].hairpin
    d.program_external_connectivity(req)
    assert w.eps()[("docker-aaaaaaaaaaaa", EID)].ports == ports
    assert ports[0].host_port == 8080 and ports[1].protocol == "udp" and ports[1].host_port >= 32768
    d.revoke_external_connectivity(T.EndpointRequest(NID, EID))
    assert w.eps()[("docker-aaaaaaaaaaaa", EID)].ports == () and w.kernel.table[1].ports == ()


def test_orphans_are_detached(d, w):
    create_net(d)
    create_ep(d)
    assert d.cleanup_orphans() == []
    w.kernel.delete_link(w.eps()[("docker-aaaaaaaaaaaa", EID)].host_ifname)  # the sandbox died with the veth
    assert d.cleanup_orphans() == [EID]
    assert not w.eps() and d._ep_rec(EID) is None


def test_joined_network_removed_by_its_owner_comes_back(d, w):
    subnet = ipaddress.ip_network("10.9.0.0/24")
    w.m.create_network(Network("cni-net", range_sets=((IPRange(subnet),),), origin="cni"))
    create_net(d, generic={"muslin.network": "cni-net"})
    assert d.docker_networks()[NID]["joined"] is True
    w.m.remove_if_unused("cni-net")  # its last CNI container left
    assert "cni-net" not in w.nets()
    create_ep(d)
    assert w.nets()["cni-net"].origin == "cni" and ("cni-net", EID) in w.eps()
    d.delete_endpoint(T.EndpointRequest(NID, EID))
    d.delete_network(T.NetworkRequest(NID))
    assert "cni-net" not in w.nets()  # no CNI and no Docker user left

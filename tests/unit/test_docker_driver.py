"""NetworkDriver handlers on a fake control layer: mapping, idempotency, ports, orphans (no root)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from muslin.docker import types as T
from muslin.docker.driver import DockerDriver
from muslin.model.errors import Conflict, Invalid, NotFound
from muslin.model.types import AttachRequest, Endpoint, IPRange, Network
from muslin.store.memory import MemoryStore

NID, NID2, EID = "a" * 64, "c" * 64, "b" * 64


class FakeMuslin:
    def __init__(self):
        self.store = MemoryStore()
        self.nets: dict[str, Network] = {}
        self.eps: dict[tuple[str, str], Endpoint] = {}
        self.calls: list[str] = []

    def find_network(self, name):
        return self.nets.get(name)

    def get_network(self, name):
        if name not in self.nets:
            raise NotFound(f"network {name!r} does not exist")
        return self.nets[name]

    def list_networks(self):
        return list(self.nets.values())

    def create_network(self, net):
        self.calls.append("create_network")
        net = replace(net, bridge=net.bridge or "mus-x")
        self.nets[net.name] = net
        return net

    def ensure_network(self, net):
        return self.nets.get(net.name) or self.create_network(net)

    def delete_network(self, name, force=False):
        if any(k[0] == name for k in self.eps):
            raise Conflict("in use")
        self.nets.pop(name, None)

    def find_endpoint(self, network, eid):
        return self.eps.get((network, eid))

    def endpoints(self, network=None):
        return [e for (n, _), e in self.eps.items() if network in (None, n)]

    def attach(self, req: AttachRequest):
        self.calls.append("attach")
        ep = Endpoint(req.network, req.endpoint_id, req.container_id, req.ifname, "", "mv1", req.mac or "02:00:00:00:00:09",
                      req.addresses, extra=(("peer", "mp1"),))
        self.eps[(req.network, req.endpoint_id)] = ep
        return ep

    def detach(self, network, eid, owner=""):
        self.calls.append("detach")
        self.eps.pop((network, eid), None)

    def set_ports(self, network, eid, ports):
        ep = replace(self.eps[(network, eid)], ports=tuple(ports))
        self.eps[(network, eid)] = ep
        return ep


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
def d():
    links = {"mv1"}
    drv = DockerDriver(FakeMuslin(), link_exists=lambda n: n in links)
    drv.links = links  # type: ignore[attr-defined]
    return drv


def test_network_and_endpoint_lifecycle_is_idempotent(d):
    create_net(d, generic={"mtu": "1400"})
    create_net(d, generic={"mtu": "1400"})
    assert d.m.calls.count("create_network") == 1
    net = d.m.nets["docker-aaaaaaaaaaaa"]
    assert net.mtu == 1400 and net.origin == "docker" and net.hairpin
    assert create_ep(d) == {"Interface": {"MacAddress": "02:00:00:00:00:09"}}
    assert create_ep(d) == {"Interface": {"MacAddress": "02:00:00:00:00:09"}}
    assert d.m.calls.count("attach") == 1
    j = d.join(T.JoinRequest.from_json({"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x"})).to_json()
    assert j == {"InterfaceName": {"SrcName": "mp1", "DstPrefix": "eth"}, "Gateway": "10.9.0.1",
                 "DisableGatewayService": True}
    req = T.EndpointRequest(NID, EID)
    assert d.endpoint_oper_info(req).to_json()["Value"]["muslin.host_ifname"] == "mv1"
    d.leave(req)
    d.leave(req)
    d.delete_endpoint(req)
    d.delete_endpoint(req)
    assert not d.m.eps
    d.delete_network(T.NetworkRequest(NID))
    d.delete_network(T.NetworkRequest(NID))
    assert not d.m.nets and d.docker_networks() == {}


def test_mac_given_by_docker_is_not_returned(d):
    create_net(d)
    assert create_ep(d, mac="02:11:22:33:44:55") == {}


def test_internal_network_has_no_gateway(d):
    create_net(d, internal=True)
    create_ep(d)
    j = d.join(T.JoinRequest(NID, EID, "/x")).to_json()
    assert "Gateway" not in j


def test_bad_options_and_join_mismatch(d):
    with pytest.raises(Invalid, match="'bogus'"):
        create_net(d, generic={"bogus": "1"})
    create_net(d, generic={"muslin.network": "shared"})
    with pytest.raises(Invalid, match="cannot be set when joining"):
        create_net(d, NID2, generic={"muslin.network": "shared", "mtu": "1400"})
    create_net(d, NID2, generic={"muslin.network": "shared"})
    assert d.docker_networks()[NID2]["joined"] is True
    d.delete_network(T.NetworkRequest(NID))  # the joiner inherits the network
    assert "shared" in d.m.nets and d.docker_networks()[NID2]["joined"] is False
    d.delete_network(T.NetworkRequest(NID2))
    assert "shared" not in d.m.nets


def test_ports_programmed_once_and_revoked(d):
    create_net(d)
    create_ep(d)
    opts = {T.PORTMAP: [{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8080}, {"Proto": 17, "Port": 53}]}
    req = T.ProgramExternalConnectivityRequest(NID, EID, opts)
    d.program_external_connectivity(req)
    ports = d.m.eps[("docker-aaaaaaaaaaaa", EID)].ports
    d.program_external_connectivity(req)
    assert d.m.eps[("docker-aaaaaaaaaaaa", EID)].ports == ports
    assert ports[0].host_port == 8080 and ports[1].protocol == "udp" and ports[1].host_port >= 32768
    d.revoke_external_connectivity(T.EndpointRequest(NID, EID))
    assert d.m.eps[("docker-aaaaaaaaaaaa", EID)].ports == ()


def test_orphans_are_detached(d):
    create_net(d)
    create_ep(d)
    assert d.cleanup_orphans() == []
    d.links.clear()  # the sandbox died and took the veth pair with it
    assert d.cleanup_orphans() == [EID]
    assert not d.m.eps and d._ep_rec(EID) is None


def test_joined_network_removed_by_its_owner_comes_back(d):
    subnet = ipaddress.ip_network("10.9.0.0/24")
    d.m.create_network(Network("cni-net", range_sets=((IPRange(subnet),),), origin="cni"))
    create_net(d, generic={"muslin.network": "cni-net"})
    assert d.docker_networks()[NID]["joined"] is True
    del d.m.nets["cni-net"]  # its last CNI container left
    create_ep(d)
    assert d.m.nets["cni-net"].origin == "cni" and ("cni-net", EID) in d.m.eps
    d.delete_endpoint(T.EndpointRequest(NID, EID))
    d.delete_network(T.NetworkRequest(NID))
    assert "cni-net" not in d.m.nets  # no CNI and no Docker user left

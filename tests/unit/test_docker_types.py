"""Docker remote API types, options, ports and the HTTP dispatcher (pure, no root)."""

from __future__ import annotations

import pytest

from muslin.docker import options as O
from muslin.docker import ports as P
from muslin.docker import types as T
from muslin.docker.server import dispatch, routes
from muslin.model.errors import Conflict, Exhausted, Invalid
from muslin.model.types import PortMapping

NID = "a" * 64
EID = "b" * 64


def test_parse_body_tolerates_empty_and_null():
    assert T.parse_body(b"") == {}
    assert T.parse_body(b"  \n") == {}
    assert T.parse_body(b"null") == {}
    with pytest.raises(Invalid):
        T.parse_body(b"[1]")
    with pytest.raises(Invalid, match="not JSON"):
        T.parse_body(b"{")


def test_create_network_request_nulls_and_unknown_fields():
    r = T.CreateNetworkRequest.from_json({
        "NetworkID": NID, "Options": {"com.docker.network.generic": {"mtu": "1400"},
                                      "com.docker.network.internal": True, "Whatever": 1},
        "IPv4Data": [{"AddressSpace": "MuslinLocal", "Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24",
                      "AuxAddresses": None}], "IPv6Data": None, "Unknown": {}})
    assert r.internal and r.generic == {"mtu": "1400"}
    assert r.ipv6_data == () and str(r.ipv4_data[0].gateway_ip()) == "10.9.0.1"
    with pytest.raises(Invalid, match="NetworkID is missing"):
        T.CreateNetworkRequest.from_json({})


def test_create_endpoint_interface_null_and_response():
    r = T.CreateEndpointRequest.from_json({"NetworkID": NID, "EndpointID": EID, "Interface": None})
    assert r.interface == T.EndpointInterface()
    assert T.CreateEndpointResponse(None).to_json() == {}
    assert T.CreateEndpointResponse(T.EndpointInterface(mac_address="02:00:00:00:00:01")).to_json() == \
        {"Interface": {"MacAddress": "02:00:00:00:00:01"}}


def test_join_response_pascal_case():
    j = T.JoinResponse("mp1", gateway="10.0.0.1", disable_gateway_service=True).to_json()
    assert j == {"InterfaceName": {"SrcName": "mp1", "DstPrefix": "eth"}, "Gateway": "10.0.0.1",
                 "DisableGatewayService": True}


def test_port_bindings():
    b = T.port_bindings({T.PORTMAP: [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080,
                                      "HostPortEnd": 8080}, {"Proto": 17, "Port": 53, "HostIP": "127.0.0.1"}]})
    assert b[0] == T.PortBinding("tcp", 80, "", 8080, 0)
    assert b[1] == T.PortBinding("udp", 53, "127.0.0.1", 0, 0)
    with pytest.raises(Invalid):
        T.port_bindings({T.PORTMAP: [{"Proto": 1, "Port": 1}]})


def test_pool_id_roundtrip():
    p = T.PoolId.parse("MuslinLocal/10.1.0.0/24/10.1.0.128/25")
    assert str(p.sub_pool) == "10.1.0.128/25" and str(p) == "MuslinLocal/10.1.0.0/24/10.1.0.128/25"
    assert str(T.PoolId.parse("S/fd00::/64").pool) == "fd00::/64"
    with pytest.raises(Invalid):
        T.PoolId.parse("nope")


def test_options_validation():
    assert O.parse_options({"mtu": "1400", "muslin.isolate": "false"}).mtu == 1400
    assert O.parse_options({"com.docker.network.driver.mtu": "9000"}).mtu == 9000
    with pytest.raises(Invalid, match="'bogus'"):
        O.parse_options({"bogus": "1"})
    with pytest.raises(Invalid, match="macvlan needs muslin.parent"):
        O.parse_options({"muslin.mode": "macvlan"})
    with pytest.raises(Invalid, match="boolean"):
        O.parse_options({"muslin.masquerade": "maybe"})
    with pytest.raises(Invalid, match="interface name"):
        O.parse_options({"muslin.bridge": "x" * 16})


def test_build_network():
    req = T.CreateNetworkRequest.from_json({
        "NetworkID": NID, "Options": {"com.docker.network.internal": True},
        "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}],
        "IPv6Data": [{"Pool": "fd00:9::/64", "Gateway": "fd00:9::1/64"}]})
    net = O.build_network(O.default_name(NID), req, O.parse_options({}))
    assert net.name == "docker-aaaaaaaaaaaa" and net.internal and net.origin == "docker"
    assert [str(s) for s in net.subnets] == ["10.9.0.0/24", "fd00:9::/64"]
    assert len(net.range_sets) == 2


def test_ports_resolve():
    taken = [PortMapping(8080, 80, "tcp", "")]
    with pytest.raises(Conflict):
        P.resolve([T.PortBinding("tcp", 80, "", 8080)], taken)
    got = P.resolve([T.PortBinding("tcp", 80, "", 8080, 8082)], taken)
    assert got[0].host_port == 8081
    got = P.resolve([T.PortBinding("udp", 53)], taken, is_free=lambda *a: a[2] % 2 == 0, ephemeral=(41, 44))
    assert got[0].host_port in (42, 44)
    with pytest.raises(Exhausted):
        P.resolve([T.PortBinding("tcp", 80, "", 8080, 8080 + 0)], [], is_free=lambda *a: False)


class _FakeIpam:
    def get_default_address_spaces(self):
        return T.AddressSpacesResponse()

    def request_pool(self, req):
        raise Conflict("subnet 10.0.0.0/8 overlaps\nsomething")


class _FakeDriver:
    def get_capabilities(self):
        return T.CapabilitiesResponse()

    def create_network(self, req):
        raise RuntimeError("boom")


def test_dispatch_error_fields_and_status():
    table = routes(_FakeDriver(), _FakeIpam())
    assert dispatch(table, "/Plugin.Activate", b"") == (200, {"Implements": ["NetworkDriver", "IpamDriver"]})
    assert dispatch(table, "/NetworkDriver.GetCapabilities", b"")[1]["Scope"] == "local"
    st, body = dispatch(table, "/IpamDriver.RequestPool", b'{"Pool": "10.0.0.0/8"}')
    assert st == 200 and body == {"Error": "subnet 10.0.0.0/8 overlaps something"}
    st, body = dispatch(table, "/NetworkDriver.CreateNetwork", b'{"NetworkID": "%s"}' % NID.encode())
    assert st == 200 and body["Err"].startswith("muslin internal error") and "\n" not in body["Err"]
    assert dispatch(table, "/NetworkDriver.Nope", b"")[0] == 404
    assert dispatch(table, "/NetworkDriver.CreateNetwork", b"{")[0] == 400


def test_reuse_bridge_option():
    assert O.parse_options({"muslin.bridge": "br0", "muslin.reuse_bridge": "true"}).reuse_bridge
    with pytest.raises(Invalid, match="needs muslin.bridge"):
        O.parse_options({"muslin.reuse_bridge": "true"})

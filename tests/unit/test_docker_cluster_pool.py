"""Docker on a cluster network's host side (docker/clusterpool.py): the pool is the cluster
CIDR, addresses and the gateway come from this host's lease; any other pool is refused with
one line naming the CIDR (no root: control layer on the fake kernel)."""

from __future__ import annotations

import ipaddress

import pytest

from muslin.control.ipam import Ipam
from muslin.control.service import Muslin
from muslin.dataplane.fake import FakeKernel
from muslin.docker import types as T
from muslin.docker.driver import DockerDriver
from muslin.docker.ipam import DockerIpam
from muslin.model import keys
from muslin.model.errors import Conflict, Invalid, Unavailable
from muslin.model.types import IPRange, Network
from muslin.store.memory import MemoryStore

NID, NID2, EID = "a" * 64, "c" * 64, "b" * 64
CIDR, LEASE = "10.244.0.0/16", "10.244.3.0/24"


class World:
    def __init__(self, tmp):
        self.kernel = FakeKernel()
        self.store = MemoryStore()
        self.m = Muslin(self.store, tmp, kernel=lambda: self.kernel)
        self.m.create_network(Network(  # what the cluster agent makes (control/agent.py local_network)
            "net0", range_sets=((IPRange(ipaddress.ip_network(LEASE)),),), masquerade=False,
            labels=((keys.CLUSTER_LABEL, "net0"), (keys.CLUSTER_CIDR_LABEL, CIDR))))
        self.ipam = DockerIpam(self.store, Ipam(self.store), self.m.list_networks, lambda: ())
        self.driver = DockerDriver(self.m, link_exists=self.m.link_exists, host_routes=lambda: ())

    def pool(self, pool="", sub="", opts=None, v6=False):
        return self.ipam.request_pool(T.RequestPoolRequest("MuslinLocal", pool, sub, dict(opts or {}), v6))

    def addr(self, pid, a="", gw=False):
        o = {T.REQUEST_ADDRESS_TYPE: T.GATEWAY_TYPE} if gw else {}
        return self.ipam.request_address(T.RequestAddressRequest(pid, a, o)).address

    def create(self, pool, gw, nid=NID, generic=None):
        return self.driver.create_network(T.CreateNetworkRequest.from_json({
            "NetworkID": nid, "Options": {"com.docker.network.generic": generic or {"muslin.network": "net0"}},
            "IPv4Data": [{"Pool": pool, "Gateway": gw}], "IPv6Data": None}))


@pytest.fixture
def w(tmp_path):
    return World(tmp_path)


def test_the_pool_is_the_cidr_and_addresses_come_from_the_lease(w):
    before = w.ipam.ipam.owners(ipaddress.ip_network(LEASE))
    p = w.pool(CIDR)
    assert p.pool == CIDR
    gw = w.addr(p.pool_id, gw=True)
    assert gw == "10.244.3.1/24"  # the host side's gateway, with the lease's prefix
    a = w.addr(p.pool_id)
    assert ipaddress.ip_interface(a).network == ipaddress.ip_network(LEASE) and a != gw
    assert w.addr(p.pool_id, "10.244.3.77") == "10.244.3.77/24"
    with pytest.raises(Invalid, match=r"outside this host's lease 10.244.3.0/24 of the cluster CIDR 10.244.0.0/16"):
        w.addr(p.pool_id, "10.244.9.5")
    w.create(CIDR, gw)
    assert w.driver.docker_networks()[NID] == {"name": "net0", "joined": True, "spec": w.m.find_network("net0").to_dict()}
    ep = w.driver.create_endpoint(T.CreateEndpointRequest.from_json(
        {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": a}}))
    assert ep is not None and w.m.find_endpoint("net0", EID) is not None
    w.ipam.release_address(T.ReleaseAddressRequest(p.pool_id, "10.244.3.77"))
    assert ipaddress.ip_address("10.244.3.77") not in w.ipam.ipam.owners(ipaddress.ip_network(LEASE))
    w.driver.delete_endpoint(T.EndpointRequest(NID, EID))
    w.driver.delete_network(T.NetworkRequest(NID))
    assert w.m.find_network("net0") is not None  # the agent's side stays
    w.ipam.release_address(T.ReleaseAddressRequest(p.pool_id, a.split("/")[0]))
    w.ipam.release_address(T.ReleaseAddressRequest(p.pool_id, gw.split("/")[0]))  # the side's own: left alone
    w.ipam.release_pool(T.ReleasePoolRequest(p.pool_id))
    w.ipam.release_pool(T.ReleasePoolRequest(p.pool_id))
    assert w.ipam.ipam.owners(ipaddress.ip_network(LEASE)) == before
    assert not list(w.store.list(keys.DOCKER_POOLS))


def test_any_other_pool_is_refused_naming_the_cidr(w):
    auto = w.pool()  # no --subnet: Docker asks for a pool before the driver sees -o muslin.network
    assert not ipaddress.ip_network(auto.pool).overlaps(ipaddress.ip_network(CIDR))
    with pytest.raises(Conflict, match=r"side of cluster network 'net0' \(CIDR 10.244.0.0/16\); Docker's pool is "
                                       r".*pass --subnet 10.244.0.0/16; .*its lease 10.244.3.0/24"):
        w.create(auto.pool, w.addr(auto.pool_id, gw=True))
    for other in (LEASE, "10.244.200.0/24", "10.240.0.0/12"):  # the lease itself is not the pool either
        with pytest.raises(Conflict, match=r"overlaps 10.244.0.0/16, the CIDR of cluster network 'net0' "
                                           r"\(give exactly 10.244.0.0/16 with -o muslin.network=net0"):
            w.pool(other)
    with pytest.raises(Invalid, match="ip-range 10.244.3.0/28 cannot be given on cluster network 'net0'"):
        w.pool(CIDR, "10.244.3.0/28")
    v6 = w.pool(v6=True)
    with pytest.raises(Invalid, match="which is IPv4 only: drop --ipv6"):
        w.driver.create_network(T.CreateNetworkRequest.from_json({
            "NetworkID": NID, "Options": {"com.docker.network.generic": {"muslin.network": "net0"}},
            "IPv4Data": [{"Pool": CIDR, "Gateway": "10.244.3.1/24"}],
            "IPv6Data": [{"Pool": v6.pool, "Gateway": w.addr(v6.pool_id, gw=True)}]}))
    p = w.pool(CIDR)
    with pytest.raises(Conflict, match="differs from 10.244.3.1, this host's gateway"):
        w.create(CIDR, "10.244.3.9/24")
    assert w.driver.docker_networks() == {}
    w.ipam.release_pool(T.ReleasePoolRequest(p.pool_id))


def test_no_address_when_the_side_is_gone(w):
    p = w.pool(CIDR)
    w.m.delete_network("net0", force=True)  # the agent left
    with pytest.raises(Unavailable, match="'net0' has no side on this host"):
        w.addr(p.pool_id)


CIDR6, LEASE6 = "fd00:10::/48", "fd00:10:0:3::/64"


def test_a_dual_stack_cluster_network_takes_both_cidrs_as_pools(tmp_path):
    w = World(tmp_path)
    w.m.delete_network("net0", force=True)
    w.m.create_network(Network(  # a dual-stack cluster network's host side
        "net0", range_sets=((IPRange(ipaddress.ip_network(LEASE)),), (IPRange(ipaddress.ip_network(LEASE6)),)),
        masquerade=False, labels=((keys.CLUSTER_LABEL, "net0"), (keys.CLUSTER_CIDR_LABEL, CIDR),
                                  (keys.CLUSTER_CIDR6_LABEL, CIDR6))))
    for other in ("fd00:10:0:9::/64", "fd00::/16"):
        with pytest.raises(Conflict, match=r"overlaps fd00:10::/48, the CIDR of cluster network 'net0'"):
            w.pool(other, v6=True)
    p4, p6 = w.pool(CIDR), w.pool(CIDR6, v6=True)
    gw4, gw6 = w.addr(p4.pool_id, gw=True), w.addr(p6.pool_id, gw=True)
    assert (gw4, gw6) == ("10.244.3.1/24", "fd00:10:0:3::1/64")  # each family from this host's lease
    assert ipaddress.ip_interface(w.addr(p6.pool_id)).network == ipaddress.ip_network(LEASE6)
    with pytest.raises(Conflict, match=r"\(CIDR 10.244.0.0/16, fd00:10::/48\); Docker's pool is 10.244.0.0/16: "
                                       r"pass --subnet 10.244.0.0/16 --subnet fd00:10::/48 with --ipv6"):
        w.create(CIDR, gw4)
    w.driver.create_network(T.CreateNetworkRequest.from_json({
        "NetworkID": NID, "Options": {"com.docker.network.generic": {"muslin.network": "net0"}},
        "IPv4Data": [{"Pool": CIDR, "Gateway": gw4}], "IPv6Data": [{"Pool": CIDR6, "Gateway": gw6}]}))
    assert [(n["name"], n["joined"]) for n in w.driver.docker_networks().values()] == [("net0", True)]

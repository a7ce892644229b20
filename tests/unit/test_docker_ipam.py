"""Docker IpamDriver handlers on Muslin's Ipam with a MemoryStore (no root)."""

from __future__ import annotations

import ipaddress

import pytest

from muslin.control.ipam import Ipam
from muslin.docker import types as T
from muslin.docker.ipam import DockerIpam
from muslin.model.errors import Conflict, Exhausted, Invalid, NotFound
from muslin.model.types import IPRange, Network
from muslin.store.memory import MemoryStore


@pytest.fixture
def env():
    store = MemoryStore()
    nets: list[Network] = []
    routes = [ipaddress.ip_network("10.200.0.0/24")]
    return DockerIpam(store, Ipam(store), lambda: list(nets), lambda: list(routes)), nets, store


def pool(d, pool="", sub="", v6=False):
    return d.request_pool(T.RequestPoolRequest("MuslinLocal", pool, sub, {}, v6))


def addr(d, pid, a="", gw=False, opts=None):
    o = dict(opts or {})
    if gw:
        o[T.REQUEST_ADDRESS_TYPE] = T.GATEWAY_TYPE
    return d.request_address(T.RequestAddressRequest(pid, a, o)).address


def test_default_pools_are_distinct_and_avoid_routes(env):
    d, nets, _ = env
    a = pool(d)
    b = pool(d)
    assert a.pool == "10.200.1.0/24" and b.pool == "10.200.2.0/24"  # 10.200.0.0/24 is a host route
    nets.append(Network("x", range_sets=((IPRange(ipaddress.ip_network("10.200.3.0/24")),),)))
    assert pool(d).pool == "10.200.4.0/24"
    assert pool(d, v6=True).pool.startswith("fd6d:7573:6c69:")


def test_identical_requests_share_a_refcounted_pool(env):
    d, _, store = env
    a = pool(d, "10.77.0.0/24")
    b = pool(d, "10.77.0.0/24")
    assert a.pool_id == b.pool_id == "MuslinLocal/10.77.0.0/24"
    d.release_pool(T.ReleasePoolRequest(a.pool_id))
    assert d.pool_record(T.PoolId.parse(a.pool_id))["refs"] == 1
    d.release_pool(T.ReleasePoolRequest(a.pool_id))
    d.release_pool(T.ReleasePoolRequest(a.pool_id))  # idempotent
    assert store.list("docker/pools/") == []


def test_overlaps_and_bad_input(env):
    d, nets, _ = env
    pool(d, "10.77.0.0/24")
    with pytest.raises(Conflict, match="overlaps subnet 10.77.0.0/24"):
        pool(d, "10.77.0.0/25")
    nets.append(Network("cni", range_sets=((IPRange(ipaddress.ip_network("10.78.0.0/24")),),)))
    with pytest.raises(Conflict, match="Muslin network 'cni'"):
        pool(d, "10.78.0.0/16")
    assert pool(d, "10.78.0.0/24").pool == "10.78.0.0/24"  # equal subnet: joinable
    with pytest.raises(Invalid):
        pool(d, "", "10.1.0.0/25")
    with pytest.raises(Invalid, match="not inside"):
        pool(d, "10.79.0.0/24", "10.80.0.0/25")
    with pytest.raises(Invalid):
        pool(d, "10.79.0.0/24", v6=True)


def test_addresses_gateway_exact_subpool_aux(env):
    d, _, _ = env
    p = pool(d, "10.77.0.0/24", "10.77.0.128/26").pool_id
    assert addr(d, p, gw=True) == "10.77.0.1/24"
    assert addr(d, p, "10.77.0.5") == "10.77.0.5/24"  # aux anywhere in the pool
    assert addr(d, p, opts={"com.docker.network.endpoint.name": "c1"}) == "10.77.0.128/24"
    assert addr(d, p) == "10.77.0.129/24"
    with pytest.raises(Conflict, match="already in use"):
        addr(d, p, "10.77.0.5")
    with pytest.raises(Conflict, match="gateway"):
        addr(d, p, "10.77.0.1")
    with pytest.raises(Invalid, match="outside"):
        addr(d, p, "10.99.0.9")
    d.release_address(T.ReleaseAddressRequest(p, "10.77.0.128"))
    d.release_address(T.ReleaseAddressRequest(p, "10.77.0.128"))  # idempotent
    assert "10.77.0.128" not in {str(k) for k in d.ipam.owners(ipaddress.ip_network("10.77.0.0/24"))}


def test_exhaustion_and_unknown_pool(env):
    d, _, _ = env
    p = pool(d, "10.77.0.0/30").pool_id
    addr(d, p, gw=True)
    assert addr(d, p) == "10.77.0.2/30"
    with pytest.raises(Exhausted):
        addr(d, p)
    with pytest.raises(NotFound):
        addr(d, "MuslinLocal/10.66.0.0/24")


def test_joined_network_gateway_and_shared_ipam(env):
    d, nets, _ = env
    nets.append(Network("cni", range_sets=((IPRange(ipaddress.ip_network("10.78.0.0/24"),
                                                    gateway=ipaddress.ip_address("10.78.0.254")),),)))
    d.ipam.reserve(ipaddress.ip_network("10.78.0.0/24"), ipaddress.ip_address("10.78.0.1"), "cni/abc/eth0")
    p = pool(d, "10.78.0.0/24").pool_id
    assert addr(d, p, gw=True) == "10.78.0.254/24"
    with pytest.raises(Conflict):
        addr(d, p, "10.78.0.9", gw=True)
    assert addr(d, p) == "10.78.0.2/24"  # .1 held by the CNI container
    d.release_address(T.ReleaseAddressRequest(p, "10.78.0.1"))  # not Docker's: left alone
    assert ipaddress.ip_address("10.78.0.1") in d.ipam.owners(ipaddress.ip_network("10.78.0.0/24"))


def test_gateway_shared_by_two_docker_networks_on_one_pool(env):
    d, _, _ = env
    p = pool(d, "10.77.0.0/24").pool_id
    assert addr(d, p, gw=True) == "10.77.0.1/24"
    pool(d, "10.77.0.0/24")
    assert addr(d, p, gw=True) == "10.77.0.1/24"
    d.release_address(T.ReleaseAddressRequest(p, "10.77.0.1"))
    d.release_pool(T.ReleasePoolRequest(p))
    assert ipaddress.ip_address("10.77.0.1") in d.ipam.owners(ipaddress.ip_network("10.77.0.0/24"))
    d.release_address(T.ReleaseAddressRequest(p, "10.77.0.1"))
    d.release_pool(T.ReleasePoolRequest(p))
    assert d.ipam.owners(ipaddress.ip_network("10.77.0.0/24")) == {}


def test_explicit_pool_overlapping_a_host_route(env):
    d, nets, _ = env
    with pytest.raises(Conflict, match="overlaps the host route 10.200.0.0/24"):
        pool(d, "10.200.0.0/23")
    nets.append(Network("mine", range_sets=((IPRange(ipaddress.ip_network("10.200.0.0/24")),),)))
    assert pool(d, "10.200.0.0/24").pool == "10.200.0.0/24"  # that route is Muslin's own network

"""Stateful IPAM over the Store: atomicity, round-robin, requested, dual stack, gc, parallel processes."""

from __future__ import annotations

import subprocess
import sys
import ipaddress
import textwrap
from ipaddress import ip_address as A
from ipaddress import ip_interface as I
from ipaddress import ip_network as N

import pytest

from muslin.control.ipam import Ipam, ip_key, last_key, owner_key
from muslin.model.errors import Conflict, Exhausted, Invalid
from muslin.model.types import IPRange
from muslin.store.base import Put
from muslin.store.memory import MemoryStore
from muslin.store.sqlite import SqliteStore

V4 = (IPRange(N("10.1.0.0/24")),)
V6 = (IPRange(N("fd00:1::/64")),)
TINY = (IPRange(N("10.9.0.0/29")),)  # .2-.6 usable (.1 gateway)


@pytest.fixture(params=["memory", "sqlite"])
def ipam(request, tmp_path):
    store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "ipam.db")
    yield Ipam(store)
    store.close()


def test_allocate_first_and_record(ipam):
    got = ipam.allocate([V4], "cni/c1/eth0", "c1", "eth0")
    assert got == [(I("10.1.0.2/24"), A("10.1.0.1"))]
    st = ipam.store
    assert st.get(ip_key(N("10.1.0.0/24"), A("10.1.0.2"))).value == {
        "owner": "cni/c1/eth0", "container_id": "c1", "ifname": "eth0"}
    assert st.get("ipam/10.1.0.0_24/ip/10.1.0.2") is not None  # documented key layout
    assert st.get(last_key(N("10.1.0.0/24"))).value == "10.1.0.2"
    assert st.get(owner_key("cni/c1/eth0")).value == [["10.1.0.0/24", "10.1.0.2"]]
    assert ipam.allocated("cni/c1/eth0") == [(N("10.1.0.0/24"), A("10.1.0.2"))]
    assert ipam.owners(N("10.1.0.0/24")) == {A("10.1.0.2"): "cni/c1/eth0"}


def test_allocate_is_idempotent_per_owner(ipam):
    a = ipam.allocate([V4], "cni/c1/eth0")
    b = ipam.allocate([V4], "cni/c1/eth0")
    assert a == b and len(ipam.owners(N("10.1.0.0/24"))) == 1


def test_distinct_addresses_and_exhaustion(ipam):
    got = [ipam.allocate([TINY], f"o/{i}")[0][0].ip for i in range(5)]
    assert got == [A(f"10.9.0.{i}") for i in range(2, 7)]
    with pytest.raises(Exhausted, match="no IP addresses available in range set 10.9.0.0/29"):
        ipam.allocate([TINY], "o/late")
    assert ipam.allocated("o/late") == []


def test_release_then_round_robin(ipam):
    for i in range(3):
        ipam.allocate([TINY], f"o/{i}")  # .2 .3 .4
    assert ipam.release("o/0") == [A("10.9.0.2")]
    assert ipam.release("o/0") == []  # idempotent
    assert ipam.allocate([TINY], "o/3")[0][0].ip == A("10.9.0.5")  # not the just-freed .2
    assert ipam.allocate([TINY], "o/4")[0][0].ip == A("10.9.0.6")
    assert ipam.allocate([TINY], "o/5")[0][0].ip == A("10.9.0.2")  # wraps around
    assert ipam.store.get(owner_key("o/0")) is None


def test_a_run_of_taken_addresses_longer_than_the_probes_falls_back_to_the_full_scan(ipam):
    from muslin.control.ipam import PROBES
    assert ipam.allocate([V4], "o/first")[0][0].ip == A("10.1.0.2")  # the cursor
    for n in range(3, 3 + PROBES + 2):  # reserved (the cursor stays): every probe after it hits
        ipam.reserve(ipaddress.ip_network("10.1.0.0/24"), A(f"10.1.0.{n}"), f"o/r{n}")
    listed = []
    keys = ipam.store.keys
    ipam.store.keys = lambda prefix, limit=0: listed.append(prefix) or keys(prefix, limit)
    got = ipam.allocate([V4], "o/next")[0][0].ip
    assert got == A(f"10.1.0.{3 + PROBES + 2}") and listed  # found by the scan, past the run
    listed.clear()
    assert ipam.allocate([V4], "o/after")[0][0].ip == got + 1 and not listed  # the first probe


def test_requested(ipam):
    assert ipam.allocate([V4], "o/a", requested=[A("10.1.0.77")])[0][0] == I("10.1.0.77/24")
    with pytest.raises(Conflict, match="10.1.0.77 is already in use in 10.1.0.0/24"):
        ipam.allocate([V4], "o/b", requested=[A("10.1.0.77")])
    with pytest.raises(Invalid, match="10.1.0.1 is the gateway"):
        ipam.allocate([V4], "o/b", requested=[A("10.1.0.1")])
    with pytest.raises(Invalid, match="requested address 10.2.0.5 is outside the range 10.1.0.0/24"):
        ipam.allocate([V4], "o/b", requested=[A("10.2.0.5")])
    assert ipam.allocated("o/b") == []


def test_dual_stack_requested_goes_to_its_set(ipam):
    got = ipam.allocate([V4, V6], "cni/c/eth0", requested=[A("fd00:1::99")])
    assert got == [(I("10.1.0.2/24"), A("10.1.0.1")), (I("fd00:1::99/64"), A("fd00:1::1"))]
    assert sorted(str(i) for _, i in ipam.allocated("cni/c/eth0")) == ["10.1.0.2", "fd00:1::99"]
    assert sorted(map(str, ipam.release("cni/c/eth0"))) == ["10.1.0.2", "fd00:1::99"]
    assert ipam.owners(N("10.1.0.0/24")) == {} and ipam.owners(N("fd00:1::/64")) == {}


def test_dual_stack_all_or_nothing(ipam):
    for i in range(5):
        ipam.allocate([TINY], f"fill/{i}")
    with pytest.raises(Exhausted):
        ipam.allocate([V6, TINY], "cni/x/eth0")
    assert ipam.owners(N("fd00:1::/64")) == {}  # the v6 address was not taken either
    assert ipam.allocated("cni/x/eth0") == []


def test_reserve(ipam):
    ipam.reserve(N("10.1.0.0/24"), A("10.1.0.1"), "docker/gw/net1")
    ipam.reserve(N("10.1.0.0/24"), A("10.1.0.1"), "docker/gw/net1")  # idempotent
    with pytest.raises(Conflict, match="10.1.0.1 in 10.1.0.0/24 is already in use by docker/gw/net1"):
        ipam.reserve(N("10.1.0.0/24"), A("10.1.0.1"), "docker/ep2")
    with pytest.raises(Invalid, match="10.2.0.1 is not inside subnet 10.1.0.0/24"):
        ipam.reserve(N("10.1.0.0/24"), A("10.2.0.1"), "docker/ep2")
    ipam.reserve(N("10.1.0.0/24"), A("10.1.0.2"), "docker/ep1")
    assert ipam.allocate([V4], "cni/c/eth0")[0][0].ip == A("10.1.0.3")


def test_release_ip_updates_owner_index(ipam):
    ipam.allocate([V4, V6], "o/x")
    assert ipam.release_ip(N("10.1.0.0/24"), A("10.1.0.2")) is True
    assert ipam.release_ip(N("10.1.0.0/24"), A("10.1.0.2")) is False
    assert ipam.allocated("o/x") == [(N("fd00:1::/64"), A("fd00:1::2"))]
    ipam.release_ip(N("fd00:1::/64"), A("fd00:1::2"))
    assert ipam.store.get(owner_key("o/x")) is None


def test_gc_releases_only_stale_owners_with_prefix(ipam):
    for o in ["cni/a/eth0", "cni/b/eth0", "cni/c/eth0", "docker/ep1"]:
        ipam.allocate([V4], o)
    gone = ipam.gc([N("10.1.0.0/24")], keep_owners=["cni/b/eth0"], owner_prefix="cni/")
    assert gone == ["cni/a/eth0", "cni/c/eth0"]
    assert sorted(ipam.owners(N("10.1.0.0/24")).values()) == ["cni/b/eth0", "docker/ep1"]
    assert ipam.gc([N("10.1.0.0/24")], keep_owners=["cni/b/eth0"], owner_prefix="cni/") == []


def test_crash_between_never_leaves_half_state(ipam):
    """A txn that fails (here: a bad lease in the same txn) writes neither record nor index."""
    st = ipam.store
    with pytest.raises(Exception):
        st.txn([], [Put(ip_key(N("10.1.0.0/24"), A("10.1.0.5")), {"owner": "x"}),
                     Put(owner_key("x"), [["10.1.0.0/24", "10.1.0.5"]], lease=424242)])
    assert ipam.owners(N("10.1.0.0/24")) == {} and ipam.allocated("x") == []


def test_bad_owner(ipam):
    with pytest.raises(Invalid, match="owner"):
        ipam.allocate([V4], "")


def test_shared_subnet_across_range_sets_definitions(ipam):
    """A Docker pool and a CNI network on one subnet share allocations (keyed by subnet)."""
    ipam.allocate([V4], "docker/ep1")
    other = (IPRange(N("10.1.0.0/24"), A("10.1.0.2"), A("10.1.0.10")),)
    assert ipam.allocate([other], "cni/c/eth0")[0][0].ip == A("10.1.0.3")


WORKER = textwrap.dedent("""
    import sys
    from ipaddress import ip_network
    from muslin.control.ipam import Ipam
    from muslin.model.types import IPRange
    from muslin.store.sqlite import SqliteStore
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rs = (IPRange(ip_network("10.50.0.0/24")),)
    for i in range(n):
        st = SqliteStore(path)  # like a CNI plugin: open per operation
        Ipam(st).allocate([rs], f"cni/{tag}-{i}/eth0", f"{tag}-{i}", "eth0")
        st.close()
""")


def test_parallel_processes_never_share_an_address(tmp_path):
    db = tmp_path / "par.db"  # not created beforehand: the workers also race to create it
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(db), f"p{k}", "20"],
                              stderr=subprocess.PIPE, text=True) for k in range(6)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    st = SqliteStore(db)
    ipam = Ipam(st)
    owners = ipam.owners(N("10.50.0.0/24"))
    assert len(owners) == 120 and len(set(owners.values())) == 120
    assert A("10.50.0.1") not in owners
    # every record matches its owner index
    for ip, owner in owners.items():
        assert ipam.allocated(owner) == [(N("10.50.0.0/24"), ip)]
    st.close()


@pytest.mark.parametrize("ip,what", [("10.1.0.0", "network"), ("10.1.0.255", "broadcast")])
def test_requested_network_or_broadcast_address_says_so(ipam, ip, what):
    # the path of `muslin connect --ip` and CNI IP=: not "outside the range" (issue 8, bug 7)
    with pytest.raises(Invalid, match=f"{ip} is the {what} address of 10.1.0.0/24"):
        ipam.allocate([V4], "cli/sb/eth0", requested=[A(ip)])
    assert ipam.allocated("cli/sb/eth0") == []

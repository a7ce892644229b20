"""Fault injection at every step of the use-cases (no root): the control layer runs on the
fake kernel; for each mutating call an operation makes (kernel or store), a fresh world fails
exactly that call, and afterwards the kernel, the store and the IPAM are exactly as before,
no lock is left held (the operation then succeeds), and nothing hangs."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faultkit import World, calls_of  # noqa: E402

from muslin.control import sandboxes  # noqa: E402
from muslin.model.errors import MuslinError  # noqa: E402
from muslin.model.types import AttachRequest, IPRange, Network, PortMapping  # noqa: E402

pytestmark = pytest.mark.timeout(120)

V4 = ipaddress.ip_network("10.61.0.0/24")
V6 = ipaddress.ip_network("fd61::/64")


def net(name="n1", subnet=V4, **kw) -> Network:
    sets = tuple((IPRange(s),) for s in (subnet if isinstance(subnet, tuple) else (subnet,)))
    return Network(name=name, range_sets=sets, **kw)


def sandbox(w: World, name: str) -> str:
    sandboxes.create(w.m, name)
    return sandboxes.path_of(name)


def each_failure(tmp_path: Path, prepare: Callable[[World], Any], op: Callable[[World], Any]) -> int:
    """Run `op` once per mutating call it makes, failing that call; assert nothing changed.
    Returns how many calls were tried."""
    runs = iter(range(10_000))

    def fresh() -> World:
        w = World(tmp_path / f"s{next(runs)}")
        prepare(w)
        return w

    calls = calls_of(fresh, op)
    assert calls, "the operation makes no change at all"
    for i, call in enumerate(calls):
        if call.startswith("docker_user"):
            continue  # best effort by design (muslind re-syncs): its failure fails nothing
        w = fresh()
        before = w.snapshot()
        w.kernel.arm(i)
        with pytest.raises(MuslinError):
            op(w)
        w.kernel.arm(None)
        assert w.snapshot() == before, f"failing call {i} ({call}) left a change behind"
        op(w)  # no lock or half-made object is in the way afterwards
    return len(calls)


def test_create_bridge_network(tmp_path):
    n = each_failure(tmp_path, lambda w: None, lambda w: w.m.create_network(net(subnet=(V4, V6))))
    assert n >= 5  # bridge, 2 addresses, firewall, record


def test_create_network_on_a_reused_bridge(tmp_path):
    def prepare(w):
        w.kernel.add_link("", "userbr", "bridge", up=True)

    each_failure(tmp_path, prepare, lambda w: w.m.create_network(net(bridge="userbr", reuse_bridge=True)))


def test_create_macvlan_network(tmp_path):
    def prepare(w):
        w.kernel.add_link("", "eth1", "veth", up=True)

    each_failure(tmp_path, prepare,
                 lambda w: w.m.create_network(Network("mv", driver="macvlan", parent="eth1", range_sets=((IPRange(V4),),))))


def test_connect_a_sandbox_with_ports(tmp_path):
    def prepare(w):
        w.m.create_network(net())
        sandbox(w, "a")

    each_failure(tmp_path, prepare, lambda w: sandboxes.connect(
        w.m, "n1", "a", ports=(PortMapping(8080, 80), PortMapping(5353, 53, "udp"))))


def test_second_network_of_a_sandbox(tmp_path):
    def prepare(w):
        w.m.create_network(net())
        w.m.create_network(net("n2", ipaddress.ip_network("10.62.0.0/24")))
        sandbox(w, "a")
        sandboxes.connect(w.m, "n1", "a", ips=(ipaddress.ip_address("10.61.0.9"),))

    each_failure(tmp_path, prepare, lambda w: sandboxes.connect(w.m, "n2", "a"))


def test_docker_style_attach(tmp_path):
    each_failure(tmp_path, lambda w: w.m.create_network(net()), lambda w: w.m.attach(AttachRequest(
        "n1", "e" * 64, "e" * 64, addresses=(ipaddress.ip_interface("10.61.0.7/24"),), owner="docker/ep/x")))


def test_macvlan_attach(tmp_path):
    def prepare(w):
        w.kernel.add_link("", "eth1", "veth", up=True)
        w.m.create_network(Network("mv", driver="macvlan", parent="eth1", range_sets=((IPRange(V4),),)))
        sandbox(w, "a")

    each_failure(tmp_path, prepare, lambda w: sandboxes.connect(w.m, "mv", "a"))


def test_cni_add_makes_its_network_and_leaves_nothing_when_it_fails(tmp_path):
    def prepare(w):
        w.kernel.add_netns("/run/netns/c1")

    each_failure(tmp_path, prepare, lambda w: w.m.ensure_and_attach(
        net("cni1", origin="cni", is_default_gateway=True),
        AttachRequest("cni1", "c1/eth0", "c1", netns="/run/netns/c1", owner="cni/c1/eth0")))


def test_set_ports(tmp_path):
    def prepare(w):
        w.m.create_network(net())
        w.m.attach(AttachRequest("n1", "e1", "e1", addresses=(ipaddress.ip_interface("10.61.0.7/24"),)))

    each_failure(tmp_path, prepare, lambda w: w.m.set_ports("n1", "e1", (PortMapping(8080, 80),)))


def test_sandbox_create(tmp_path):
    each_failure(tmp_path, lambda w: None, lambda w: sandboxes.create(w.m, "s1"))


def test_none_attach(tmp_path):
    def prepare(w):
        w.m.create_network(Network("nothing", driver="none"))
        w.kernel.add_netns("/run/netns/c2")

    each_failure(tmp_path, prepare, lambda w: w.m.attach(AttachRequest("nothing", "c2/eth0", "c2",
                                                                        netns="/run/netns/c2")))


def each_teardown_failure(tmp_path: Path, prepare: Callable[[World], Any], op: Callable[[World], Any]) -> int:
    """Teardown is idempotent: after a failure at any of its calls, running it again ends
    exactly where an undisturbed run ends."""
    def fresh() -> World:
        w = World(tmp_path / "t")  # one state dir: it is in the firewall's owner mark
        prepare(w)
        return w

    clean = fresh()
    op(clean)
    expected = clean.snapshot()
    calls = calls_of(fresh, op)
    for i, call in enumerate(calls):
        w = fresh()
        w.kernel.arm(i)
        try:
            op(w)
        except MuslinError:
            pass
        w.kernel.arm(None)
        op(w)
        got = w.snapshot()
        assert got == expected, f"after failing call {i} ({call}) and again, the teardown differs"
    return len(calls)


def _connected(w: World) -> None:
    w.m.create_network(net())
    sandbox(w, "a")
    sandboxes.connect(w.m, "n1", "a", ports=(PortMapping(8080, 80),))


def test_disconnect_is_idempotent_after_any_failure(tmp_path):
    each_teardown_failure(tmp_path, _connected, lambda w: sandboxes.disconnect(w.m, "n1", "a"))


def test_disconnect_with_the_reaper_is_idempotent_after_any_failure(tmp_path):
    from muslin.control.reaper import Reaper

    def prepare(w):
        w.m.reaper = Reaper()
        _connected(w)

    def op(w):
        sandboxes.disconnect(w.m, "n1", "a")
        w.m.reap()

    each_teardown_failure(tmp_path, prepare, op)


def test_network_rm_is_idempotent_after_any_failure(tmp_path):
    def op(w):
        if w.m.find_network("n1") is not None:
            w.m.delete_network("n1", force=True)

    each_teardown_failure(tmp_path, _connected, op)

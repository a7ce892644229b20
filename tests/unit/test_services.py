"""Services on the fake kernel (no root): bad input changes nothing, and every step of every
service use-case fails cleanly (fault injection: the kernel, the store and the IPAM are left
exactly as before, and the operation then succeeds)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from faultkit import World  # noqa: E402
from test_faults import each_teardown_failure, net, sandbox  # noqa: E402

from muslin.control import sandboxes  # noqa: E402
from muslin.control import services as svcs  # noqa: E402
from muslin.model.errors import Conflict, Invalid, MuslinError, NotFound  # noqa: E402
from faultkit import calls_of  # noqa: E402
from muslin.model.types import ServicePort  # noqa: E402

pytestmark = pytest.mark.timeout(120)

WEB = (ServicePort(80, "tcp"), ServicePort(53, "udp"))


def best_effort(call: str) -> bool:
    """Calls after the change is made whose failure is only logged: a UDP conntrack entry
    left times out by itself, a bridge port's hairpin mode left on is harmless."""
    return call.startswith(("conntrack_flush", "docker_user")) or (call.startswith("set_hairpin")
                                                                   and call.endswith("False)"))


def each_failure(tmp_path, prepare, op) -> int:
    """test_faults.each_failure, where a best-effort call's failure fails nothing: then the
    outcome is that of an undisturbed run."""
    runs = iter(range(10_000))

    def fresh() -> World:
        w = World(tmp_path / f"s{next(runs)}")
        prepare(w)
        return w

    calls = calls_of(fresh, op)
    assert calls, "the operation makes no change at all"
    for i, call in enumerate(calls):
        if best_effort(call):
            continue
        w = fresh()
        before = w.snapshot()
        w.kernel.arm(i)
        with pytest.raises(MuslinError):
            op(w)
        w.kernel.arm(None)
        assert w.snapshot() == before, f"failing call {i} ({call}) left a change behind"
        op(w)
    return len(calls)


def backends(w: World, n: int = 2, app: str = "web") -> None:
    w.m.create_network(net())
    for i in range(n):
        sandbox(w, f"b{i}")
        sandboxes.connect(w.m, "n1", f"b{i}", labels={"app": app})


def with_service(w: World, affinity: int = 0) -> None:
    backends(w)
    w.m.create_service("web", "n1", WEB, {"app": "web"}, affinity=affinity)


def chains(w: World) -> dict[str, tuple[str, ...]]:
    return {c: tuple(map(str, p.backends)) for c, p in w.kernel.services.items()}


# -- what the use-cases do -------------------------------------------------------------------

def test_create_selects_the_labelled_endpoints_and_takes_a_vip_from_the_range(tmp_path):
    w = World(tmp_path / "s")
    backends(w)
    sandbox(w, "other")
    sandboxes.connect(w.m, "n1", "other", labels={"app": "db"})
    s = w.m.create_service("web", "n1", WEB, {"app": "web"})
    assert s.vip in ipaddress.ip_network("10.96.0.0/12")
    assert sorted(b.endpoint for b in s.backends) == ["b0/eth0", "b1/eth0"]
    assert chains(w) == {"svc/n1/web/tcp/80": ("10.61.0.2", "10.61.0.3"),
                         "svc/n1/web/udp/53": ("10.61.0.2", "10.61.0.3")}
    assert w.kernel.service_vips == {s.vip}
    assert w.m.find_network("n1").service_range == "10.96.0.0/20"


def test_endpoints_join_and_leave_on_attach_detach_and_relabel(tmp_path):
    w = World(tmp_path / "s")
    with_service(w)
    sandbox(w, "b2")
    sandboxes.connect(w.m, "n1", "b2", labels={"app": "web"})
    assert len(w.m.find_service("web").backends) == 3
    sandboxes.label(w.m, "b0", {"app": "old"}, [])
    sandboxes.disconnect(w.m, "n1", "b1")
    s = w.m.find_service("web")
    assert [b.endpoint for b in s.backends] == ["b2/eth0"]
    assert chains(w)["svc/n1/web/tcp/80"] == (str(s.backends[0].ip),)


def test_udp_conntrack_entries_to_a_leaving_backend_are_flushed(tmp_path):
    w = World(tmp_path / "s")
    with_service(w)
    s = w.m.find_service("web")
    gone = str(w.m.find_endpoint("n1", "b0/eth0").addresses[0].ip)
    w.kernel.conntrack = [("udp", str(s.vip), 53, gone), ("udp", str(s.vip), 53, "10.61.0.3")]
    sandboxes.disconnect(w.m, "n1", "b0")
    assert w.kernel.conntrack == [("udp", str(s.vip), 53, "10.61.0.3")]


def test_remove_gives_the_vip_back_and_empties_the_kernel(tmp_path):
    w = World(tmp_path / "s")
    with_service(w)
    vip = w.m.find_service("web").vip
    w.m.remove_service("web")
    assert w.kernel.services == {} and w.kernel.service_vips == set() and w.kernel.service_local == set()
    assert not [k for k in w.store.dump() if k.startswith(("services/", "service-index/", "ipam-owner/svc/"))]
    assert w.m.create_service("web", "n1", WEB, {"app": "web"}, vip=vip).vip == vip


def test_resync_restores_the_kernel_from_the_store(tmp_path):
    w = World(tmp_path / "s")
    with_service(w)
    want = w.kernel.snapshot()
    w.kernel.services, w.kernel.service_vips = {}, set()
    assert w.m.sync_services() == 1
    assert w.kernel.snapshot()["services"] == want["services"]


# -- bad input: one clear error, nothing changed --------------------------------------------

@pytest.mark.parametrize("kw, error, text", [
    ({"vip": "10.200.0.1"}, Invalid, "outside the service range"),
    ({"vip": "nope"}, Invalid, "not an IP address"),
    ({"ports": (ServicePort(0, "tcp"),)}, Invalid, "not a port number"),
    ({"ports": (ServicePort(70000, "tcp"),)}, Invalid, "not a port number"),
    ({"ports": (ServicePort(80, "icmp"),)}, Invalid, "not one of tcp, udp, sctp"),
    ({"ports": (ServicePort(80, "tcp"), ServicePort(80, "tcp"))}, Invalid, "given twice"),
    ({"ports": ()}, Invalid, "at least one port"),
    ({"selector": {}}, Invalid, "needs a selector"),
    ({"name": "web"}, Conflict, "already exists"),
    ({"name": "a.b"}, Invalid, "one DNS label"),
    ({"network": "nope"}, NotFound, "does not exist"),
    ({"affinity": -1}, Invalid, "seconds"),
])
def test_bad_input_changes_nothing(tmp_path, kw, error, text):
    w = World(tmp_path / "s")
    with_service(w)
    before = w.snapshot()
    args = {"name": "api", "network": "n1", "ports": WEB, "selector": {"app": "web"}, **kw}
    with pytest.raises(error) as e:
        w.m.create_service(args.pop("name"), args.pop("network"), args.pop("ports"), args.pop("selector"), **args)
    assert text in str(e.value) and "\n" not in str(e.value)
    assert w.snapshot() == before


def test_a_vip_taken_twice_is_a_conflict(tmp_path):
    w = World(tmp_path / "s")
    with_service(w)
    vip = w.m.find_service("web").vip
    before = w.snapshot()
    with pytest.raises(MuslinError):
        w.m.create_service("api", "n1", WEB, {"app": "web"}, vip=vip)
    assert w.snapshot() == before


def test_a_network_with_services_is_not_removed_without_force(tmp_path):
    w = World(tmp_path / "s")
    with_service(w)
    for i in range(2):
        sandboxes.disconnect(w.m, "n1", f"b{i}")
    before = w.snapshot()
    with pytest.raises(Conflict, match="service"):
        w.m.delete_network("n1")
    assert w.snapshot() == before


def test_a_service_range_overlapping_a_subnet_is_refused(tmp_path):
    w = World(tmp_path / "s")
    w.m.create_network(net())
    before = w.snapshot()
    with pytest.raises(MuslinError, match="overlaps"):
        w.m.create_network(net("n2", ipaddress.ip_network("10.62.0.0/24"), service_range="10.61.0.0/16"))
    assert w.snapshot() == before


# -- fault injection: every step of every use-case --------------------------------------------

def test_create_service_faults(tmp_path):
    assert each_failure(tmp_path, backends, lambda w: w.m.create_service("web", "n1", WEB, {"app": "web"})) >= 2


def test_create_service_with_affinity_and_a_vip_faults(tmp_path):
    each_failure(tmp_path, backends, lambda w: w.m.create_service(
        "web", "n1", WEB, {"app": "web"}, vip=ipaddress.ip_address("10.96.0.77"), affinity=30))


def test_create_the_first_service_without_endpoints_faults(tmp_path):
    each_failure(tmp_path, lambda w: w.m.create_network(net()),
                 lambda w: w.m.create_service("web", "n1", WEB, {"app": "web"}))


def test_remove_service_faults(tmp_path):
    each_failure(tmp_path, with_service, lambda w: w.m.remove_service("web"))


def test_connect_a_backend_faults(tmp_path):
    def prepare(w):
        with_service(w)
        sandbox(w, "b9")

    each_failure(tmp_path, prepare, lambda w: sandboxes.connect(w.m, "n1", "b9", labels={"app": "web"}))


def test_relabel_a_backend_out_faults(tmp_path):
    each_failure(tmp_path, with_service, lambda w: sandboxes.label(w.m, "b0", {"app": "db"}, []))


def test_relabel_a_sandbox_in_faults(tmp_path):
    def prepare(w):
        with_service(w)
        sandbox(w, "c")
        sandboxes.connect(w.m, "n1", "c")

    each_failure(tmp_path, prepare, lambda w: sandboxes.label(w.m, "c", {"app": "web"}, []))


def test_resync_faults(tmp_path):
    def prepare(w):
        with_service(w)
        w.kernel.services = {}

    each_teardown_failure(tmp_path, prepare, lambda w: w.m.sync_services())


def test_disconnect_a_backend_is_idempotent_after_any_failure(tmp_path):
    each_teardown_failure(tmp_path, lambda w: with_service(w, affinity=10),
                          lambda w: sandboxes.disconnect(w.m, "n1", "b0"))


def test_network_rm_force_with_services_is_idempotent_after_any_failure(tmp_path):
    def op(w):
        if w.m.find_network("n1") is not None:
            w.m.delete_network("n1", force=True)

    each_teardown_failure(tmp_path, with_service, op)


def test_a_backends_bridge_port_hairpins_while_it_backs_a_service(tmp_path):
    w = World(tmp_path / "s")
    backends(w, 1)
    ifname = w.m.find_endpoint("n1", "b0/eth0").host_ifname
    hairpin = lambda: w.kernel._link(ifname).hairpin  # noqa: E731
    assert not hairpin()
    w.m.create_service("web", "n1", WEB, {"app": "web"})
    w.m.create_service("api", "n1", (ServicePort(8080),), {"app": "web"})
    assert hairpin() and w.kernel.service_local == {ipaddress.ip_address("10.61.0.2")}
    w.m.remove_service("web")
    assert hairpin()  # api still needs it
    w.m.remove_service("api")
    assert not hairpin() and w.kernel.service_local == set()


def test_the_selector_holds_within_a_namespace(tmp_path):
    w = World(tmp_path / "s")
    backends(w)
    assert w.m.create_service("web", "n1", WEB, {"app": "web"}, namespace="other").backends == ()
    assert chains(w) == {"svc/n1/web/tcp/80": (), "svc/n1/web/udp/53": ()}


# -- other hosts' endpoints (control/service_members.py) ---------------------------------------

def _remote(w: World):
    import threading

    from muslin.control.service_members import RemoteMembers
    from muslin.model import keys
    from muslin.store.memory import MemoryStore

    cluster = MemoryStore()
    rm = RemoteMembers(cluster, w.m, "n1", "h1", threading.Event())
    rec = {"endpoint_id": "x/eth0", "labels": {"app": "web"}, "namespace": "default", "addresses": ["10.61.1.5/24"]}
    return rm, cluster, keys.cluster_endpoint("n1", "h2", "x/eth0"), rec


def test_another_hosts_endpoint_joins_and_leaves_a_service(tmp_path):
    w = World(tmp_path / "s")
    with_service(w)
    rm, cluster, key, rec = _remote(w)
    cluster.put(key, rec)
    cluster.put(key.replace("/h2/", "/h1/"), dict(rec, endpoint_id="mine"))  # this host's own: not a remote one
    rm.apply(key, rec)
    s = w.m.find_service("web")
    assert [(b.host, str(b.ip)) for b in s.backends if b.host] == [("h2", "10.61.1.5")]
    assert "10.61.1.5" in chains(w)["svc/n1/web/tcp/80"]
    rm.apply(key, dict(rec, labels={"app": "db"}))  # relabelled there
    assert not [b for b in w.m.find_service("web").backends if b.host]
    rm.apply(key, rec)
    rm.apply(key, None)  # gone there
    assert not [b for b in w.m.find_service("web").backends if b.host]
    assert not [k for k in w.store.dump() if k.startswith("remote-endpoints/")]


def test_a_failed_remote_change_is_made_right_by_the_next_load(tmp_path):
    w = World(tmp_path / "s")
    with_service(w)
    rm, cluster, key, rec = _remote(w)
    cluster.put(key, rec)
    w.kernel.arm(0)  # the first mutating call fails: the local copy's write
    with pytest.raises(MuslinError):
        rm.apply(key, rec)
    w.kernel.arm(None)
    rm.load()  # what the feed's loop does after an error
    assert [b.host for b in w.m.find_service("web").backends if b.host] == ["h2"]
    for i in range(3):  # and a failure at each later call of the change
        w.kernel.arm(i)
        try:
            rm.apply(key, dict(rec, labels={"app": "db"}))
        except MuslinError:
            pass
        w.kernel.arm(None)
        rm.load()
        cluster.put(key, rec)
        rm.load()
        assert [b.host for b in w.m.find_service("web").backends if b.host] == ["h2"]
        assert "10.61.1.5" in chains(w)["svc/n1/web/tcp/80"]

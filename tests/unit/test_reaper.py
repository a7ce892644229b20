"""Deferred deletion (control/reaper.py) on the fake kernel: a detach in muslind retires the
host end (off the bridge, down, in the reap group) and hands its addresses to reap/<ifname>;
a reap deletes every retired link and frees them; an address a retired link still holds is
never given to someone else first, but asking for it reaps at once."""

from __future__ import annotations

import ipaddress
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faultkit import World  # noqa: E402

from muslin.control.reaper import Reaper  # noqa: E402
from muslin.model import keys  # noqa: E402
from muslin.model.names import REAP_GROUP  # noqa: E402
from muslin.model.types import AttachRequest, IPRange, Network  # noqa: E402

NET = Network("n1", range_sets=((IPRange(ipaddress.ip_network("10.71.0.0/29")),),))


@pytest.fixture
def w(tmp_path):
    w = World(tmp_path / "s")
    w.m.reaper = Reaper()
    w.m.create_network(NET)
    return w


def attach(w, cid: str, ip: str = ""):  # type: ignore[no-untyped-def]
    w.kernel.add_netns(f"/run/netns/{cid}") if f"/run/netns/{cid}" not in w.kernel.namespaces else None
    return w.m.attach(AttachRequest("n1", f"{cid}/eth0", cid, netns=f"/run/netns/{cid}", owner=f"cni/{cid}/eth0",
                                    ips=(ipaddress.ip_address(ip),) if ip else ()))


def test_detach_retires_then_a_reap_deletes_and_frees(w):
    ep = attach(w, "c1")
    w.m.detach("n1", "c1/eth0")
    link = w.kernel.namespaces[""][ep.host_ifname]
    assert (link.group, link.master, link.up) == (REAP_GROUP, "", False)
    assert w.m.ipam.allocated(keys.reap_owner(ep.host_ifname)) and not w.m.ipam.allocated("cni/c1/eth0")
    assert w.m.find_endpoint("n1", "c1/eth0") is None and w.m.reaper._pending
    assert w.m.reaper.reap_now() == 1
    assert ep.host_ifname not in w.kernel.namespaces[""] and w.m.retired_links() == []
    assert w.m.ipam.owners(ipaddress.ip_network("10.71.0.0/29")) == {}


def test_held_address_goes_to_no_one_else_but_asking_for_it_reaps(w):
    ep = attach(w, "c1", "10.71.0.4")
    w.m.detach("n1", "c1/eth0")
    others = [attach(w, f"o{i}") for i in range(4)]  # the /29 has 5 usable: 10.71.0.4 is skipped
    assert "10.71.0.4" not in {str(a.ip) for e in others for a in e.addresses}
    again = attach(w, "c2", "10.71.0.4")  # reaps now, then gets it
    assert str(again.addresses[0].ip) == "10.71.0.4" and ep.host_ifname not in w.kernel.namespaces[""]


def test_readd_of_the_same_endpoint_while_retired(w):
    ep = attach(w, "c1")
    w.m.detach("n1", "c1/eth0")
    again = attach(w, "c1")  # the retired leftover of the same name is deleted at once
    assert again.host_ifname == ep.host_ifname and w.kernel.namespaces[""][ep.host_ifname].group == 0
    w.m.reaper.reap_now()
    assert ep.host_ifname in w.kernel.namespaces[""]  # the new link is not in the reap group


def test_a_muslin_opened_later_notes_what_a_dead_muslind_left(w, tmp_path):
    attach(w, "c1")
    w.m.detach("n1", "c1/eth0")
    from muslin.control.service import Muslin

    fresh = Reaper()
    Muslin.default_reaper = fresh
    try:
        m2 = Muslin(w.store, w.m.state_dir, kernel=lambda: w.kernel)  # type: ignore[arg-type]
    finally:
        Muslin.default_reaper = None
    assert list(fresh._pending.values()) == [m2]
    assert fresh.reap_now() == 1 and w.m.retired_links() == []


def test_the_reaper_thread_reaps_a_burst_in_one_delete(w):
    eps = [attach(w, f"c{i}") for i in range(4)]
    stop = threading.Event()
    t = threading.Thread(target=w.m.reaper.run, args=(stop,))
    t.start()
    for e in eps:
        w.m.detach("n1", e.endpoint_id)
    for _ in range(200):
        if not w.m.retired_links():
            break
        stop.wait(0.01)
    stop.set()
    t.join(5)
    assert w.m.retired_links() == [] and sum(c.startswith("reap_links") for c in w.kernel.calls) <= 2

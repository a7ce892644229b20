"""`muslin network repair`: put back what Muslin made that was changed by hand, for the
networks named (or all): the bridge (made again when gone), each endpoint's veth on its
bridge and up, the firewall table and its sysctls, the DOCKER-USER pairs, and the retired
links the DEL reaper has not deleted yet. What `muslin doctor` suggests for those faults."""

from __future__ import annotations

from typing import TYPE_CHECKING

from muslin.drivers.base import get_driver

if TYPE_CHECKING:
    from muslin.control.service import Muslin


def repair(m: Muslin, names: list[str] | None = None) -> list[str]:
    """Returns one line per thing it put back."""
    done: list[str] = []
    nets = [m.get_network(n) for n in names] if names else m.list_networks()
    with m.kernel() as k:
        for net in nets:
            if not get_driver(net.driver).bridged:
                continue
            before = k.link(net.bridge)
            m.repair_network(net.name)
            if before is None or not before.up:
                done.append(f"{net.name}: bridge {net.bridge} made again")
            br = k.link(net.bridge)
            for ep in m.endpoints(net.name):
                if ep.peer or not ep.host_ifname:
                    continue
                lk = k.link(ep.host_ifname)
                if lk is None or (br is not None and lk.master == br.index and lk.up):
                    continue
                k.enslave(ep.host_ifname, net.bridge, net.hairpin)
                done.append(f"{net.name}: {ep.host_ifname} of {ep.endpoint_id} back on {net.bridge}")
    m.sync_firewall()
    m.sync_docker_user()
    freed = m.reap()
    if freed:
        done.append(f"reaped retired links, {freed} addresses freed")
    return done

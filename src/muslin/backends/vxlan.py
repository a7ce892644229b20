"""VXLAN backend: one VXLAN device per network (its own VNI, no learning); for each peer
an FDB entry (its VTEP MAC and the all-zero MAC -> its underlay address), a permanent
neighbour (its VTEP address -> VTEP MAC) and a route (its subnet via its VTEP address,
onlink). MTU = underlay MTU - 50 on the device and on the network's bridge and veths.
A host publishes its VTEP MAC and VTEP address (the subnet's network address)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from muslin.backends.base import Backend
from muslin.backends.model import ClusterConfig, Desired, HostRecord, Local, device_name, stable_mac
from muslin.model.kernel import FdbSpec, NeighSpec, Owned, RouteSpec, VxlanDev

ZERO_MAC = "00:00:00:00:00:00"


def vxlan_name(network: str) -> str:
    return device_name("mx-", network)


def vtep_mac(network: str, hostname: str) -> str:
    """A stable, locally administered unicast MAC for a host's VTEP."""
    return stable_mac(f"{network}/{hostname}")


class Vxlan(Backend):
    name = "vxlan"
    overhead = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8

    def publish(self, cfg: ClusterConfig, me: HostRecord, facts: Mapping[str, str]) -> dict[str, str]:
        return {"vtep_mac": vtep_mac(cfg.network, me.hostname),
                "vtep_ip": str(ipaddress.ip_network(me.subnet).network_address)}

    def owned(self, network: str, facts: Mapping[str, str]) -> Owned:
        return Owned(devices=(vxlan_name(network),))

    def desired(self, cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> Desired:
        me = local.record
        dev = vxlan_name(cfg.network)
        mtu = self.network_mtu(cfg, local)
        routes, neighs, fdb, problems = set(), set(), set(), []
        for p in peers:
            if p.hostname == me.hostname:
                continue
            mac, ip = p.get("vtep_mac").lower(), p.get("vtep_ip")
            if not (mac and ip and p.underlay):
                problems.append(f"peer {p.hostname}: its record has no VTEP (not a vxlan host?); skipped")
                continue
            routes.add(RouteSpec(p.subnet, ip, dev, onlink=True))
            neighs.add(NeighSpec(dev, ip, mac))
            fdb.add(FdbSpec(dev, mac, p.underlay))
            fdb.add(FdbSpec(dev, ZERO_MAC, p.underlay))
        mine = self.publish(cfg, me, dict(local.facts))
        vx = VxlanDev(dev, cfg.vni, me.underlay, cfg.port, local.underlay_dev, mtu, mine["vtep_mac"],
                      f"{mine['vtep_ip']}/32")
        return Desired(frozenset(routes), frozenset(neighs), frozenset(fdb), (vx,), network_mtu=mtu,
                       problems=tuple(problems))


BACKEND = Vxlan()

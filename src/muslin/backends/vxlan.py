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
    per_peer = True
    overhead = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8

    def publish(self, cfg: ClusterConfig, me: HostRecord, facts: Mapping[str, str]) -> dict[str, str]:
        return {"vtep_mac": vtep_mac(cfg.network, me.hostname),
                "vtep_ip": str(ipaddress.ip_network(me.subnet).network_address)}

    def owned(self, network: str, facts: Mapping[str, str]) -> Owned:
        return Owned(devices=(vxlan_name(network),))

    def peer_desired(self, cfg: ClusterConfig, local: Local, p: HostRecord) -> Desired:
        if p.hostname == local.record.hostname:
            return Desired()
        dev = vxlan_name(cfg.network)
        mac, ip = p.get("vtep_mac").lower(), p.get("vtep_ip")
        if not (mac and ip and p.underlay):
            return Desired(problems=(f"peer {p.hostname}: its record has no VTEP (not a vxlan host?); skipped",))
        return Desired(frozenset({RouteSpec(p.subnet, ip, dev, onlink=True)}), frozenset({NeighSpec(dev, ip, mac)}),
                       frozenset({FdbSpec(dev, mac, p.underlay), FdbSpec(dev, ZERO_MAC, p.underlay)}))

    def desired(self, cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> Desired:
        me = local.record
        dev = vxlan_name(cfg.network)
        mtu = self.network_mtu(cfg, local)
        routes, neighs, fdb, problems = set(), set(), set(), []
        for p in peers:
            d = self.peer_desired(cfg, local, p)
            routes |= d.routes
            neighs |= d.neighs
            fdb |= d.fdb
            problems += d.problems
        mine = self.publish(cfg, me, dict(local.facts))
        vx = VxlanDev(dev, cfg.vni, me.underlay, cfg.port, local.underlay_dev, mtu, mine["vtep_mac"],
                      f"{mine['vtep_ip']}/32")
        return Desired(frozenset(routes), frozenset(neighs), frozenset(fdb), (vx,), network_mtu=mtu,
                       problems=tuple(problems))


BACKEND = Vxlan()

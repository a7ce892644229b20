"""VXLAN backend: one VXLAN device per network (its own VNI, no learning); for each peer
an FDB entry (its VTEP MAC and the all-zero MAC -> its underlay address), a permanent
neighbour (its VTEP address -> VTEP MAC) and a route (its subnet via its VTEP address,
onlink). MTU = underlay MTU - 50 on the device and on the network's bridge and veths."""

from __future__ import annotations

from muslin.backends.model import VXLAN_OVERHEAD, ClusterConfig, Desired, HostRecord, Local, device_name
from muslin.model.kernel import FdbSpec, NeighSpec, RouteSpec, VxlanDev

ZERO_MAC = "00:00:00:00:00:00"


def vxlan_name(network: str) -> str:
    return device_name("mx-", network)


def network_mtu(cfg: ClusterConfig, local: Local) -> int:
    return cfg.mtu or local.underlay_mtu - VXLAN_OVERHEAD


def desired(cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> Desired:
    me = local.record
    dev = vxlan_name(cfg.network)
    mtu = network_mtu(cfg, local)
    routes, neighs, fdb, problems = set(), set(), set(), []
    for p in peers:
        if p.hostname == me.hostname:
            continue
        if not (p.vtep_mac and p.vtep_ip and p.underlay):
            problems.append(f"peer {p.hostname}: its record has no VTEP (not a vxlan host?); skipped")
            continue
        routes.add(RouteSpec(p.subnet, p.vtep_ip, dev, onlink=True))
        neighs.add(NeighSpec(dev, p.vtep_ip, p.vtep_mac.lower()))
        fdb.add(FdbSpec(dev, p.vtep_mac.lower(), p.underlay))
        fdb.add(FdbSpec(dev, ZERO_MAC, p.underlay))
    vx = VxlanDev(dev, cfg.vni, me.underlay, cfg.port, local.underlay_dev, mtu, me.vtep_mac.lower(), f"{me.vtep_ip}/32")
    return Desired(frozenset(routes), frozenset(neighs), frozenset(fdb), vx, network_mtu=mtu, problems=tuple(problems))

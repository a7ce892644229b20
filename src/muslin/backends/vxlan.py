"""VXLAN backend: one VXLAN device per network (its own VNI, no learning); for each peer
an FDB entry (its VTEP MAC and the all-zero MAC -> its underlay address), a permanent
neighbour per address family (its VTEP address -> VTEP MAC) and a route per family (its
subnet via its VTEP address, onlink). MTU = underlay MTU - 50 (- 70 over an IPv6 underlay)
on the device and on the network's bridge and veths. A host publishes its VTEP MAC and
VTEP addresses (each subnet's network address: `vtep_ip`, `vtep_ip6`).

Dual-stack: one device carries both families (the encapsulation is Ethernet); it has IPv6
on but no IPv6 address of its own (no link-local: no DAD, router solicitations or MLD
flooded to every peer), since the IPv6 routes go via the peers' VTEP addresses onlink with
permanent neighbours. Option `underlay=ipv6`: the tunnel itself runs over the hosts' IPv6
underlay addresses (`underlay6` in their records)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from muslin.backends.base import Backend
from muslin.backends.model import ClusterConfig, Desired, HostRecord, Local, device_name, stable_mac
from muslin.model.errors import Invalid
from muslin.model.kernel import FdbSpec, NeighSpec, Owned, RouteSpec, VxlanDev

ZERO_MAC = "00:00:00:00:00:00"
VTEP_KEY = {4: "vtep_ip", 6: "vtep_ip6"}


def vxlan_name(network: str) -> str:
    return device_name("mx-", network)


def vtep_mac(network: str, hostname: str) -> str:
    """A stable, locally administered unicast MAC for a host's VTEP."""
    return stable_mac(f"{network}/{hostname}")


@dataclass(frozen=True)
class VxlanOptions:
    underlay: str = "ipv4"  # the family of the tunnel's outer header: ipv4 | ipv6

    def check(self) -> None:
        if self.underlay not in ("ipv4", "ipv6"):
            raise Invalid(f"backend vxlan: option underlay must be ipv4 or ipv6, not {self.underlay!r}")


class Vxlan(Backend):
    name = "vxlan"
    per_peer = True
    overhead = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
    Options = VxlanOptions

    def over_ipv6(self, cfg: ClusterConfig) -> bool:
        return self.options(cfg).underlay == "ipv6"

    def wants_underlay6(self, cfg: ClusterConfig) -> bool:
        return cfg.has_ipv6 or self.over_ipv6(cfg)  # the tunnel over IPv6 needs it, whatever it carries

    def network_mtu(self, cfg: ClusterConfig, local: Local) -> int:
        return cfg.mtu or local.underlay_mtu - self.overhead - (20 if self.over_ipv6(cfg) else 0)

    def publish(self, cfg: ClusterConfig, me: HostRecord, facts: Mapping[str, str]) -> dict[str, str]:
        out = {"vtep_mac": vtep_mac(cfg.network, me.hostname)}
        for s in me.subnets:
            net = ipaddress.ip_network(s)
            out[VTEP_KEY[net.version]] = str(net.network_address)
        return out

    def owned(self, network: str, facts: Mapping[str, str]) -> Owned:
        return Owned(devices=(vxlan_name(network),))

    def peer_desired(self, cfg: ClusterConfig, local: Local, p: HostRecord) -> Desired:
        me = local.record
        if p.hostname == me.hostname:
            return Desired()
        dev = vxlan_name(cfg.network)
        mac = p.get("vtep_mac").lower()
        under = p.underlay6 if self.over_ipv6(cfg) else p.underlay
        vteps = {v: p.get(k) for v, k in VTEP_KEY.items() if p.get(k) and p.subnet_of(v) and me.subnet_of(v)}
        if not (mac and vteps and under):
            what = "IPv6 underlay address" if self.over_ipv6(cfg) and not under else "VTEP (not a vxlan host?)"
            return Desired(problems=(f"peer {p.hostname}: its record has no {what}; skipped",))
        routes = {RouteSpec(p.subnet_of(v), ip, dev, onlink=True) for v, ip in vteps.items()}
        neighs = {NeighSpec(dev, ip, mac) for ip in vteps.values()}
        problems = tuple(f"peer {p.hostname}: it has no IPv{v} subnet (an agent of another version?); "
                         f"IPv{v} to it is not routed" for v in (4, 6) if me.subnet_of(v) and not p.subnet_of(v))
        return Desired(frozenset(routes), frozenset(neighs),
                       frozenset({FdbSpec(dev, mac, under), FdbSpec(dev, ZERO_MAC, under)}), problems=problems)

    def desired(self, cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> Desired:
        me = local.record
        dev = vxlan_name(cfg.network)
        mtu = self.network_mtu(cfg, local)
        problems: list[str] = []
        if self.over_ipv6(cfg) and not me.underlay6:
            problems.append(f"vxlan over IPv6: {me.hostname} has no IPv6 underlay address (give the underlay "
                            f"device a global IPv6 address, or --underlay-ip6)")
            return Desired(network_mtu=mtu, problems=tuple(problems))
        routes, neighs, fdb = set(), set(), set()
        for p in peers:
            d = self.peer_desired(cfg, local, p)
            routes |= d.routes
            neighs |= d.neighs
            fdb |= d.fdb
            problems += d.problems
        mine = self.publish(cfg, me, dict(local.facts))
        vx = VxlanDev(dev, cfg.vni, me.underlay6 if self.over_ipv6(cfg) else me.underlay, cfg.port,
                      local.underlay_dev, mtu, mine["vtep_mac"], f"{mine['vtep_ip']}/32" if "vtep_ip" in mine else "",
                      ipv6=cfg.has_ipv6)
        return Desired(frozenset(routes), frozenset(neighs), frozenset(fdb), (vx,), network_mtu=mtu,
                       problems=tuple(problems))


BACKEND = Vxlan()

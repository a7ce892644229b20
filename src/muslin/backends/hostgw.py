"""host-gw backend: a route to each peer's subnet via the peer's underlay address (IPv4),
and to its IPv6 subnet via its IPv6 underlay address (dual-stack and IPv6-only networks:
the hosts' `underlay6`). Works only when every peer is on a directly connected underlay
subnet (of that family)."""

from __future__ import annotations

import ipaddress

from muslin.backends.base import Backend
from muslin.backends.model import ClusterConfig, Desired, HostRecord, Local
from muslin.model.errors import Invalid
from muslin.model.kernel import RouteSpec


def check_peer(local: Local, peer: HostRecord, version: int = 4) -> str:
    """The peer's underlay address of that family, on our connected subnet; Invalid when not."""
    me = local.record
    net, gw = (me.underlay_net, peer.underlay) if version == 4 else (me.underlay_net6, peer.underlay6)
    if not net:
        raise Invalid(f"host-gw: the IPv{version} underlay subnet of {me.hostname} is unknown"
                      + (" (give its underlay device a global IPv6 address)" if version == 6 else ""))
    if not gw:
        raise Invalid(f"host-gw: peer {peer.hostname} has no IPv{version} underlay address; "
                      f"its IPv{version} subnet is not routed")
    if ipaddress.ip_address(gw) not in ipaddress.ip_network(net, strict=False):
        raise Invalid(f"host-gw: peer {peer.hostname} ({gw}) is not on the directly connected "
                      f"underlay subnet {net} of {me.hostname}; use the vxlan or bgp backend")
    return gw


class HostGw(Backend):
    name = "host-gw"
    per_peer = True

    def peer_desired(self, cfg: ClusterConfig, local: Local, p: HostRecord) -> Desired:
        if p.hostname == local.record.hostname:
            return Desired()
        routes, problems = set(), []
        for v in (4, 6):
            if not (p.subnet_of(v) and local.record.subnet_of(v)):
                continue
            try:
                routes.add(RouteSpec(p.subnet_of(v), check_peer(local, p, v), local.underlay_dev))
            except Invalid as e:
                problems.append(str(e))
        return Desired(routes=frozenset(routes), problems=tuple(problems))

    def desired(self, cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> Desired:
        routes, problems = set(), []
        for p in peers:
            d = self.peer_desired(cfg, local, p)
            routes |= d.routes
            problems += d.problems
        return Desired(routes=frozenset(routes), network_mtu=self.network_mtu(cfg, local), problems=tuple(problems))


BACKEND = HostGw()

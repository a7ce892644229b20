"""host-gw backend: a route to each peer's subnet via the peer's underlay address.
Works only when every peer is on a directly connected underlay subnet."""

from __future__ import annotations

import ipaddress

from muslin.backends.base import Backend
from muslin.backends.model import ClusterConfig, Desired, HostRecord, Local
from muslin.model.errors import Invalid
from muslin.model.kernel import RouteSpec


def check_peer(local: Local, peer: HostRecord) -> None:
    """Raises Invalid when the peer's underlay address is not on our connected subnet."""
    net = local.record.underlay_net
    if not net:
        raise Invalid(f"host-gw: the underlay subnet of {local.record.hostname} is unknown")
    if ipaddress.ip_address(peer.underlay) not in ipaddress.ip_network(net, strict=False):
        raise Invalid(f"host-gw: peer {peer.hostname} ({peer.underlay}) is not on the directly connected "
                      f"underlay subnet {net} of {local.record.hostname}; use the vxlan or bgp backend")


class HostGw(Backend):
    name = "host-gw"

    def desired(self, cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> Desired:
        routes, problems = set(), []
        for p in peers:
            if p.hostname == local.record.hostname:
                continue
            try:
                check_peer(local, p)
            except Invalid as e:
                problems.append(str(e))
                continue
            routes.add(RouteSpec(p.subnet, p.underlay, local.underlay_dev))
        return Desired(routes=frozenset(routes), network_mtu=self.network_mtu(cfg, local), problems=tuple(problems))


BACKEND = HostGw()

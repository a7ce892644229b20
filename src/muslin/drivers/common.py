"""Pieces shared by drivers: the sandbox's routes and its endpoint record."""

from __future__ import annotations

import ipaddress

from muslin.dataplane import links
from muslin.model.errors import Conflict, NotFound
from muslin.model.types import AttachRequest, Endpoint, Network, Route
from muslin.drivers.base import Addr

DEFAULT = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


def sandbox_routes(net: Network, addrs: list[Addr]) -> list[Route]:
    """Network routes (a route without gw goes via the gateway of its family), plus a
    default route per family when the network is the default gateway and not internal."""
    gws = {a.version: gw for a, gw in addrs if gw is not None}
    routes: list[Route] = []
    for r in net.routes:
        gw = r.gw or gws.get(r.dst.version)
        if r.dst.version in {a.version for a, _ in addrs}:
            routes.append(Route(r.dst, gw))
    have_default = {r.dst.version for r in routes if r.dst.prefixlen == 0}
    if net.is_default_gateway and not net.internal:
        for v, gw in sorted(gws.items()):
            if v not in have_default:
                routes.append(Route(DEFAULT[v], gw))
    return routes


def require_free_ifname(req: AttachRequest) -> None:
    """The sandbox must exist and must not have an interface called req.ifname yet."""
    if not req.netns:
        return
    if not links.netns_exists(req.netns):
        raise NotFound(f"network namespace {req.netns} does not exist")
    if links.sandbox_has_link(req.netns, req.ifname):
        raise Conflict(f"interface {req.ifname} already exists in {req.netns}")


def make_endpoint(net: Network, req: AttachRequest, addrs: list[Addr], host_ifname: str, mac: str,
                  routes: list[Route], mtu: int, **extra: str) -> Endpoint:
    return Endpoint(
        network=net.name, endpoint_id=req.endpoint_id, container_id=req.container_id, ifname=req.ifname,
        netns=req.netns, host_ifname=host_ifname, mac=mac, addresses=tuple(a for a, _ in addrs),
        gateways=tuple(gw for _, gw in addrs if gw is not None), routes=tuple(routes), mtu=mtu,
        ports=req.ports, aliases=req.aliases, extra=tuple(sorted(extra.items())),
    )

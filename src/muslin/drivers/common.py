"""Pieces shared by drivers: the sandbox's routes, and the checks of a sandbox interface."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from muslin.drivers.base import Addr
from muslin.model.errors import Conflict, MuslinError, NotFound
from muslin.model.types import AttachRequest, Endpoint, Network, Route

if TYPE_CHECKING:
    from muslin.dataplane.api import Kernel

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


def taken_ifname(k: Kernel, req: AttachRequest, what: str) -> MuslinError:
    """The error for a link that could not be made because a name is taken."""
    if req.netns and req.ifname in k.sandbox_links(req.netns):
        return Conflict(f"interface {req.ifname} already exists in {req.netns}")
    return Conflict(f"{what}: already exists")


def check_sandbox(k: Kernel, ep: Endpoint) -> None:
    try:
        seen = k.sandbox_describe(ep.netns, ep.ifname)
    except MuslinError as e:
        raise NotFound(f"sandbox {ep.netns}: {e}") from None
    if not seen:
        raise NotFound(f"interface {ep.ifname} is missing in {ep.netns}")
    have = {ipaddress.ip_interface(a) for a in seen["addresses"]}
    missing = [str(a) for a in ep.addresses if a not in have]
    if missing:
        raise NotFound(f"interface {ep.ifname} in {ep.netns} lacks {', '.join(missing)}")
    if ep.mac and seen["mac"].lower() != ep.mac.lower():
        raise NotFound(f"interface {ep.ifname} has MAC {seen['mac']}, expected {ep.mac}")

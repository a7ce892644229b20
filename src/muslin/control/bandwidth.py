"""An endpoint's bandwidth limits on its host side (tc), as plan steps with their undos.

Ingress (into the sandbox): a tbf as the root qdisc of the host veth. Egress (out of it):
the veth's ingress redirected to an ifb of its own (`names.ifb_name`) with a root tbf.
The ifb is the only link this makes; it goes on detach, with the veth's qdiscs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from muslin.model import names
from muslin.model.errors import NotFound
from muslin.model.types import Endpoint
from muslin.plan import Step

if TYPE_CHECKING:
    from muslin.dataplane.api import Kernel


def steps(k: Kernel, ep: Endpoint) -> Iterator[Step]:
    bw, veth = ep.bandwidth, ep.host_ifname
    if not bw or not veth:
        return
    if bw.ingress_rate:
        yield Step("bandwidth ingress", lambda: k.tc_tbf(veth, bw.ingress_rate, bw.ingress_burst),
                   lambda _: k.tc_clear(veth))
    if bw.egress_rate:
        ifb = names.ifb_name(ep.network, ep.endpoint_id)
        yield Step("bandwidth ifb", lambda: k.create_ifb(ifb), lambda _: k.delete_link(ifb))
        yield Step("bandwidth egress tbf", lambda: k.tc_tbf(ifb, bw.egress_rate, bw.egress_burst))  # goes with the ifb
        yield Step("bandwidth egress", lambda: k.tc_redirect(veth, ifb), lambda _: k.tc_clear(veth))


def remove(k: Kernel, ep: Endpoint, known: bool = True) -> None:
    """Undo what `steps` made; idempotent. `known=False` (no record: a crashed attach): the
    derived ifb is deleted if it is there (the veth, and its qdiscs, go with the driver's detach)."""
    if known and not ep.bandwidth:
        return
    if known and ep.host_ifname:
        k.tc_clear(ep.host_ifname)  # first: nothing is redirected to the ifb when it goes
    k.delete_link(names.ifb_name(ep.network, ep.endpoint_id))


def check(k: Kernel, ep: Endpoint) -> None:
    """NotFound when the kernel's limits are not the record's (CNI CHECK)."""
    bw, veth = ep.bandwidth, ep.host_ifname
    if not bw or not veth:
        return
    ifb = names.ifb_name(ep.network, ep.endpoint_id)
    rate, redirect = k.tc_limits(veth)
    if rate // 8 != bw.ingress_rate // 8:
        raise NotFound(f"endpoint {ep.endpoint_id}: the ingress limit on {veth} is "
                       f"{rate or 'missing'}, the record says {bw.ingress_rate or 'none'} bit/s")
    if bw.egress_rate:
        egress = k.tc_limits(ifb)[0] if redirect == ifb else 0
        if egress // 8 != bw.egress_rate // 8:
            raise NotFound(f"endpoint {ep.endpoint_id}: the egress limit through {ifb} is "
                           f"{egress or 'missing'}, the record says {bw.egress_rate} bit/s")
    elif redirect:
        raise NotFound(f"endpoint {ep.endpoint_id}: {veth} is redirected to {redirect}, the record has no egress limit")

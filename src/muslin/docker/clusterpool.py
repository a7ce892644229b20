"""Docker networks on a cluster network's host side: the pool is the cluster CIDR, the
addresses come from this host's lease.

A cluster agent keeps its host's side of cluster network N as an ordinary Muslin bridge
network named N on the host's leased subnet, labelled with the cluster's CIDR
(control/agent.py `local_network`). `docker network create -d muslin --ipam-driver muslin
--subnet CIDR -o muslin.network=N N` joins it: Docker's pool is the whole CIDR (what every
host's Docker shows), each host hands out addresses and its gateway from its own lease,
with the lease's prefix length, so a container's on-link subnet is its host's lease and
everything else in the CIDR goes through the gateway to the backend's routes.

--subnet is needed: Docker asks the IPAM driver for the pool before the network driver
sees `-o muslin.network`, so without it the pool is an ordinary default one and the join is
refused naming the CIDR. The IPAM cannot pick the CIDR by itself either (say from
`--ipam-opt`): for a pool it chose, Docker before v27 checks the routes of its namespace,
and one overlapping them (the cluster's always do) is held and asked for again, forever
when the driver answers the same pool (seen: 100 000 RequestPool calls in two minutes).

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from muslin.model import keys
from muslin.model.errors import Conflict, Invalid
from muslin.model.types import IPNetwork, Network


def cidrs_of(net: Network) -> list[IPNetwork]:
    """The cluster CIDRs (IPv4, and IPv6 when dual-stack) of a cluster network's host side,
    [] for any other network."""
    labels = dict(net.labels)
    out = []
    for key in (keys.CLUSTER_CIDR_LABEL, keys.CLUSTER_CIDR6_LABEL):
        try:
            if labels.get(key):
                out.append(ipaddress.ip_network(labels[key]))
        except ValueError:
            pass
    return out


def cidr_of(net: Network) -> IPNetwork | None:
    """The (first) cluster CIDR of a cluster network's host side, None for any other network."""
    c = cidrs_of(net)
    return c[0] if c else None


def side_for_pool(networks: Iterable[Network], pool: IPNetwork) -> Network | None:
    """The host side one of whose cluster CIDRs is exactly this pool."""
    for net in networks:
        if pool in cidrs_of(net):
            return net
    return None


def lease_of(net: Network, version: int = 4) -> IPNetwork:
    """This host's leased subnet of one family: the host side's subnet."""
    for s in net.subnets:
        if s.version == version:
            return s
    raise Invalid(f"network {net.name!r} has no IPv{version} subnet")


def check_join(existing: Network, wanted: Network) -> None:
    """A Docker network joining a cluster network's host side must have the cluster CIDRs as
    its pools, one per family (and, when Docker names one, the host side's gateway)."""
    cidrs = cidrs_of(existing)
    assert cidrs
    name = dict(existing.labels).get(keys.CLUSTER_LABEL, existing.name)
    leases = ", ".join(str(s) for s in existing.subnets)
    how = ("pass " + " ".join(f"--subnet {c}" for c in cidrs) + (" with --ipv6" if any(c.version == 6 for c in cidrs)
                                                                  and len(cidrs) > 1 else "")
           + f"; this host's addresses come from its lease {leases}")
    pools = [r.subnet for rs in wanted.range_sets for r in rs]
    families = {c.version for c in cidrs}
    if any(p.version not in families for p in pools):
        only = " and ".join(f"IPv{v}" for v in sorted(families))
        raise Invalid(f"Muslin network {existing.name!r} is this host's side of cluster network {name!r}, "
                      f"which is {only} only: {'drop --ipv6' if families == {4} else how}")
    if sorted(pools, key=str) != sorted(cidrs, key=str):
        shown = ", ".join(str(p) for p in pools)
        raise Conflict(f"Muslin network {existing.name!r} is this host's side of cluster network {name!r} "
                       f"(CIDR {', '.join(map(str, cidrs))}); Docker's pool is {shown}: {how}")
    gws = {g.network: g.ip for g in existing.gateways()}
    for rs in wanted.range_sets:
        for r in rs:
            gw = gws.get(lease_of(existing, r.subnet.version)) if r.subnet.version in families else None
            if r.gateway is not None and gw is not None and r.gateway != gw:
                raise Conflict(f"gateway {r.gateway} differs from {gw}, this host's gateway on cluster "
                               f"network {name!r} (leave out --gateway)")

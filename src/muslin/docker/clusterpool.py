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


def cidr_of(net: Network) -> IPNetwork | None:
    """The cluster CIDR of a cluster network's host side, None for any other network."""
    v = dict(net.labels).get(keys.CLUSTER_CIDR_LABEL, "")
    try:
        return ipaddress.ip_network(v) if v else None
    except ValueError:
        return None


def side_for_pool(networks: Iterable[Network], pool: IPNetwork) -> Network | None:
    """The host side whose cluster CIDR is exactly this pool."""
    for net in networks:
        if cidr_of(net) == pool:
            return net
    return None


def lease_of(net: Network, version: int = 4) -> IPNetwork:
    """This host's leased subnet: the host side's subnet."""
    for s in net.subnets:
        if s.version == version:
            return s
    raise Invalid(f"network {net.name!r} has no IPv{version} subnet")


def check_join(existing: Network, wanted: Network) -> None:
    """A Docker network joining a cluster network's host side must have the cluster CIDR as
    its one pool (and, when Docker names one, the host side's gateway)."""
    cidr = cidr_of(existing)
    assert cidr is not None
    lease = lease_of(existing)
    name = dict(existing.labels).get(keys.CLUSTER_LABEL, existing.name)
    how = f"pass --subnet {cidr}; this host's addresses come from its lease {lease}"
    pools = [r.subnet for rs in wanted.range_sets for r in rs]
    if any(p.version != cidr.version for p in pools):
        raise Invalid(f"Muslin network {existing.name!r} is this host's side of cluster network {name!r}, "
                      f"which is IPv{cidr.version} only: drop --ipv6")
    if pools != [cidr]:
        shown = ", ".join(str(p) for p in pools)
        raise Conflict(f"Muslin network {existing.name!r} is this host's side of cluster network {name!r} "
                       f"(CIDR {cidr}); Docker's pool is {shown}: {how}")
    gw = next((g.ip for g in existing.gateways() if g.network == lease), None)
    for rs in wanted.range_sets:
        for r in rs:
            if r.gateway is not None and gw is not None and r.gateway != gw:
                raise Conflict(f"gateway {r.gateway} differs from {gw}, this host's gateway on cluster "
                               f"network {name!r} (leave out --gateway)")

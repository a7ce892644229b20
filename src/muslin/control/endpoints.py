"""Use-cases on endpoints: attach, detach, check, gc, published ports.

An attach is one plan: allocate, the driver's steps, the firewall (when it publishes
ports), the record. When a step fails the ones before it are undone, and the undo of the
allocation gives back exactly the addresses this attach took (never others the owner holds).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

from muslin.control import bandwidth, firewall, networks, policy, services
from muslin.control.ipam import Allocation
from muslin.control.timings import timed
from muslin.drivers.base import Addr, Made, get_driver
from muslin.model import keys, names
from muslin.model.errors import Conflict, Exhausted, Invalid, MuslinError, NotFound
from muslin.model.types import AttachRequest, Endpoint, Network, PortMapping
from muslin.plan import Step, run

if TYPE_CHECKING:
    from muslin.control.service import Muslin
    from muslin.dataplane.api import Kernel


def attach(m: Muslin, k: Kernel, req: AttachRequest) -> Endpoint:
    with timed(m.timings, "attach (all)"):
        return _attach(m, k, req)


def _attach(m: Muslin, k: Kernel, req: AttachRequest) -> Endpoint:
    names.check_ifname(req.ifname)
    mac = names.check_mac(req.mac) if req.mac else ""
    req = replace(req, mac=mac)
    net = networks.get(m, req.network)
    try:
        with m.lock(net.name, exclusive=False):
            net = networks.get(m, net.name)  # it may have gone while we waited
            return attach_locked(m, k, net, req)
    except BaseException:
        if net.origin == "cni":
            networks.remove_if_unused(m, k, net.name)
        raise


def ensure_and_attach(m: Muslin, k: Kernel, net: Network, req: AttachRequest, join: bool = False) -> Endpoint:
    """CNI: the network its config implies (or the existing one it joins), then the attach.
    The last DEL of a CNI network may remove it between the two: make it again, twice at most."""
    for attempt in range(3):
        with timed(m.timings, "ensure network"):
            have, changed = (networks.get(m, net.name), None) if join else networks.ensure(m, k, net)
        try:
            return attach(m, k, replace(req, network=have.name))
        except NotFound:
            if join or attempt == 2 or m.find_network(have.name) is not None:
                raise
        except BaseException:
            # The attach removed the network this call made: so goes what making it changed
            # (ip_forward), unless another network of this state dir appeared meanwhile.
            if changed and not m.list_networks():
                k.restore_sysctls(changed)
            raise
    raise AssertionError("unreachable")


def attach_locked(m: Muslin, k: Kernel, net: Network, req: AttachRequest) -> Endpoint:
    driver = get_driver(net.driver)
    key = keys.endpoint(net.name, req.endpoint_id)
    if m.store.get(key) is not None:
        raise Conflict(f"endpoint {req.endpoint_id} is already attached to network {net.name!r}")
    if req.netns and not k.netns_exists(req.netns):
        raise NotFound(f"network namespace {req.netns} does not exist")
    if req.mac:
        for other in m.endpoints(net.name):
            if other.mac.lower() == req.mac:
                raise Conflict(f"MAC {req.mac} is already used by endpoint {other.endpoint_id} on network {net.name!r}")
    if req.ports and not driver.bridged:
        raise Conflict(f"network {net.name!r} (driver {net.driver}) cannot publish ports")
    if req.bandwidth and not driver.bridged:
        raise Conflict(f"network {net.name!r} (driver {net.driver}) cannot limit bandwidth (no host-side veth)")
    if req.ports:
        check_ports_free(m, net, req)
    networks.repair_locked(k, net)  # its bridge was deleted by hand, say: make it again
    owner = req.owner or keys.default_owner(net.name, req.endpoint_id)
    out = Made()
    addrs: list[Addr] = []
    ep: list[Endpoint] = []

    def allocate() -> Allocation | None:
        nonlocal addrs
        if not driver.uses_ipam:
            return None
        if req.addresses:
            addrs = [(a, gateway_for(net, a)) for a in req.addresses]
            return None
        try:
            alloc = m.ipam.take(net.range_sets, owner, req.container_id, req.ifname, list(req.ips))
        except (Conflict, Exhausted):
            if not m.store.keys(keys.ipam_owner(keys.REAP_OWNERS), limit=1):
                raise
            reap(m, k)  # a detached endpoint's retired link still held them: reap it now
            alloc = m.ipam.take(net.range_sets, owner, req.container_id, req.ifname, list(req.ips))
        addrs = alloc.addrs
        return alloc

    def record() -> None:
        m.store.put(key, ep[0].to_dict(), expect=0)

    def plan() -> Iterator[Step]:
        yield Step("allocate", allocate, lambda alloc: alloc and m.ipam.give_back(owner, alloc))
        yield from driver.attach_steps(k, net, req, addrs, out)
        ep.append(_endpoint(net, req, addrs, out, owner, ipam_owned=driver.uses_ipam and not req.addresses))
        yield from bandwidth.steps(k, ep[0])
        if ep[0].ports:
            yield firewall.step(m, k, firewall.deferred(m, add_endpoints=ep))
        yield Step("endpoint record", record, lambda _: m.store.delete(key))
        if services.present(m, net.name):  # it joins the services its labels select
            yield services.endpoint_step(m, k, ep[0])
        yield from policy.attach_steps(m, k, net, ep[0])  # anti-spoofing, network policy

    run(plan(), m.timings)
    return ep[0]


def check_ports_free(m: Muslin, net: Network, req: AttachRequest) -> None:
    """Conflict, before anything is made, when a requested host port is already published
    (by another endpoint of this state dir, on any network, or twice in this request)."""
    from muslin.model import ports as P

    versions = {s.version for s in net.subnets} or {a.version for a in req.addresses}
    want = [(p, P.families(p, versions)) for p in req.ports]
    for p, fp in want:
        if versions and not fp & versions:
            raise Invalid(f"host port {P.describe(p)}: network {net.name!r} has no IPv{min(fp)} address "
                          "to forward it to")
    for i, (p, fp) in enumerate(want):
        for q, fq in want[:i]:
            if P.clash(p, fp, q, fq):
                raise Conflict(f"host port {P.describe(p)} is published twice by this request")
    for other in m.endpoints():
        versions = {a.version for a in other.addresses}
        for q in other.ports:
            fq = P.families(q, versions)
            for p, fp in want:
                if P.clash(p, fp, q, fq):
                    raise Conflict(f"host port {P.describe(p)} is already published by endpoint "
                                   f"{other.endpoint_id} on network {other.network!r} ({P.describe(q)})")


def _endpoint(net: Network, req: AttachRequest, addrs: list[Addr], out: Made, owner: str,
              ipam_owned: bool) -> Endpoint:
    addresses = out.addresses if out.addresses is not None else tuple(a for a, _ in addrs)
    return Endpoint(
        network=net.name, endpoint_id=req.endpoint_id, container_id=req.container_id, ifname=req.ifname,
        netns=req.netns, host_ifname=out.host_ifname, mac=out.mac, addresses=tuple(addresses),
        gateways=tuple(gw for _, gw in addrs if gw is not None), routes=out.routes, mtu=out.mtu,
        ports=req.ports, aliases=req.aliases, ipam_owned=ipam_owned, owner=owner, peer=out.peer,
        interfaces=tuple(out.interfaces), name=req.name, labels=req.labels, namespace=req.namespace,
        exposed=req.exposed, bandwidth=req.bandwidth or None)


def gateway_for(net: Network, addr) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:  # type: ignore[no-untyped-def]
    for rs in net.range_sets:
        for r in rs:
            if addr.ip in r.subnet:
                return r.gateway
    return None


def detach(m: Muslin, k: Kernel, network: str, endpoint_id: str, owner: str = "", netns: str = "",
           ifname: str = "") -> None:
    """Disconnect; idempotent. Without a record (crash, never attached), the derived
    names and `owner` still find and free what an attach may have made."""
    with timed(m.timings, "detach (all)"):
        _detach(m, k, network, endpoint_id, owner, netns, ifname)


def _detach(m: Muslin, k: Kernel, network: str, endpoint_id: str, owner: str, netns: str, ifname: str) -> None:
    net = m.find_network(network)
    with m.lock(network, exclusive=False):
        ep = m.find_endpoint(network, endpoint_id)
        if ep is None:
            ep = Endpoint(network=network, endpoint_id=endpoint_id, container_id="", ifname=ifname, netns=netns,
                          host_ifname=names.host_ifname(network, endpoint_id), mac="", addresses=(),
                          owner=owner or keys.default_owner(network, endpoint_id))
            if net is not None and get_driver(net.driver).bridged:
                bandwidth.remove(k, ep, known=False)  # a crashed attach's ifb
        detach_locked(m, k, net, ep)
    if net is not None and net.origin == "cni":
        networks.remove_if_unused(m, k, network)


def detach_locked(m: Muslin, k: Kernel, net: Network | None, ep: Endpoint) -> None:
    """Kernel first, then the firewall, then the addresses, then the record: a failure
    half-way leaves the record, so a retry finds what is left (freeing by owner never frees
    anyone else's address)."""
    retired = False
    bandwidth.remove(k, ep)
    with timed(m.timings, "detach links"):
        if net is not None:
            retired = get_driver(net.driver).detach(k, net, ep, retire=m.reaper is not None)
        elif ep.host_ifname:
            k.delete_link(ep.host_ifname)
    if ep.ports:
        firewall.sync(m, k, firewall.deferred(m, drop_endpoints=[(ep.network, ep.endpoint_id)]))
    if ep.addresses and services.present(m, ep.network):  # out of its services before its address is free
        services.members_changed(m, k, [(services.Member.of(ep), None)])
    if ep.ipam_owned and ep.owner:
        if retired:  # the sandbox end still holds them until the reap: no one else gets them before
            m.ipam.hand_over(ep.owner, keys.reap_owner(ep.host_ifname))
        else:
            m.ipam.release(ep.owner)
    policy.detach_guard(m, k, net, ep)  # anti-spoofing
    m.store.delete(keys.endpoint(ep.network, ep.endpoint_id))
    policy.after_detach(m, k, net, ep)  # network policy
    if retired and m.reaper is not None:
        m.reaper.note(m)


def reap(m: Muslin, k: Kernel) -> int:
    """Delete every retired link in one message, then free the addresses they held.
    Returns how many owners were freed. Owners listed before the delete are freed after it:
    a link retired in between waits for the next reap."""
    owners = [key[len(keys.IPAM_OWNERS):] for key in m.store.keys(keys.ipam_owner(keys.REAP_OWNERS))]
    k.reap_links()
    for owner in owners:
        m.ipam.release(owner)
    return len(owners)


def check(m: Muslin, k: Kernel, network: str, endpoint_id: str, netns: str = "") -> Endpoint:
    net = networks.get(m, network)
    ep = m.find_endpoint(network, endpoint_id)
    if ep is None:
        raise NotFound(f"endpoint {endpoint_id} is not attached to network {network!r}")
    if netns and ep.netns and not k.same_netns(netns, ep.netns):
        raise NotFound(f"network namespace {netns} is not the one of the attachment ({ep.netns})")
    get_driver(net.driver).check_endpoint(k, net, ep)
    bandwidth.check(k, ep)
    return ep


def gc(m: Muslin, k: Kernel, network: str, keep: set[str], owner_prefix: str = "") -> list[str]:
    """Detach every endpoint of `network` whose id is not in `keep` and whose owner starts
    with `owner_prefix` (a CNI GC collects only CNI attachments); keep going on errors and
    raise the first one at the end."""
    removed: list[str] = []
    first: MuslinError | None = None
    for ep in m.endpoints(network):
        if ep.endpoint_id in keep or not ep.owner.startswith(owner_prefix):
            continue
        try:
            detach(m, k, network, ep.endpoint_id)
            removed.append(ep.endpoint_id)
        except MuslinError as e:
            first = first or e
    if first:
        raise first
    return removed


def set_ports(m: Muslin, k: Kernel, network: str, endpoint_id: str, ports: tuple[PortMapping, ...]) -> Endpoint:
    """Replace an endpoint's published ports (Docker publishes after Join)."""
    key = keys.endpoint(network, endpoint_id)
    with m.lock(network, exclusive=False):
        kv = m.store.get(key)
        if kv is None:
            raise NotFound(f"endpoint {endpoint_id} is not attached to network {network!r}")
        old = Endpoint.from_dict(kv.value)
        if old.ports == tuple(ports):
            return old  # nothing changes (Docker programs "no ports" on every connect)
        net = networks.get(m, network)
        if ports and not get_driver(net.driver).bridged:
            raise Conflict(f"network {network!r} (driver {net.driver}) cannot publish ports")
        ep = replace(old, ports=tuple(ports))
        hairpin = bool(ep.host_ifname) and get_driver(net.driver).bridged
        run([Step("hairpin", lambda: hairpin and k.set_hairpin(ep.host_ifname, net.hairpin or bool(ports)),
                  lambda _: hairpin and k.set_hairpin(ep.host_ifname, net.hairpin or bool(old.ports))),
             firewall.step(m, k, firewall.deferred(m, add_endpoints=[ep])),
             Step("endpoint record", lambda: m.store.put(key, ep.to_dict(), expect=kv.mod_revision))])
        return ep

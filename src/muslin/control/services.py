"""Use-cases on services: a virtual IP (VIP) of a network in front of the endpoints whose
labels match a selector, on this host and, for a cluster network, on the others.

The store holds each service (`services/<net>/<name>`: the spec and the backends now
programmed), two indexes (`service-index/sel/...`: services by their first selector pair,
so an endpoint's change finds its candidate services without reading all of them;
`service-index/ip/<ip>/...`: the services a local address backs, so what backends share in
the kernel -- the raw exemption, the hairpin masquerade, the bridge port's hairpin mode --
lives exactly while one service needs it) and the VIP in the IPAM (owner `svc/<net>/<name>`,
from the network's service range). The kernel side is firewall/services.py.

Every change -- a service made or removed, an endpoint attached, detached or relabelled, a
remote endpoint seen -- is one plan under the services lock: the kernel batch (undone with
the reverse batch), then the records in one transaction; then UDP conntrack entries to the
backends that left are deleted. Its cost is that of the services it touches.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable

from muslin.control.locks import flock
from muslin.drivers.base import get_driver
from muslin.firewall.services import PROTOCOLS, ServiceChanges, SvcPort
from muslin.model import keys, names
from muslin.model.errors import Conflict, Exhausted, Invalid, NotFound
from muslin.model.types import (DEFAULT_NAMESPACE, Backend, Endpoint, IPAddress, IPNetwork, IPRange, Network,
                                Service, ServicePort)
from muslin.plan import Step, run
from muslin.store.base import Compare, Delete, Put

if TYPE_CHECKING:
    from muslin.control.service import Muslin
    from muslin.dataplane.api import Kernel

log = logging.getLogger("muslin.services")

POOL = ipaddress.ip_network("10.96.0.0/12")  # where default service ranges come from
RANGE_PREFIX = 20  # a default service range: 4,094 VIPs
AFFINITY_MAX = 86400
NAME_MAX = 63


def owner_key(network: str, name: str) -> str:
    """The IPAM owner of a service's VIP."""
    return f"svc/{network}/{name}"


def _lock(m: Muslin):  # type: ignore[no-untyped-def]
    return flock(m.state_dir / "locks" / "services.lock", exclusive=True)


# -- who may be a backend -------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """An endpoint as services see it: local (host '') or another host's (cluster)."""

    network: str
    endpoint: str
    host: str
    labels: tuple[tuple[str, str], ...]
    namespace: str
    addresses: tuple[IPAddress, ...]
    host_ifname: str = ""

    @classmethod
    def of(cls, ep: Endpoint) -> Member:
        return cls(ep.network, ep.endpoint_id, "", tuple(ep.labels), ep.namespace, tuple(a.ip for a in ep.addresses),
                   ep.host_ifname)

    @classmethod
    def remote(cls, network: str, host: str, value: dict[str, Any]) -> Member | None:
        try:
            return cls(network, str(value["endpoint_id"]), host, tuple(sorted(dict(value.get("labels") or {}).items())),
                       str(value.get("namespace") or DEFAULT_NAMESPACE),
                       tuple(ipaddress.ip_interface(a).ip for a in value.get("addresses", ())))
        except (KeyError, ValueError, TypeError, AttributeError):
            return None

    def backend_for(self, svc: Service) -> Backend | None:
        if not svc.selects(self.labels, self.namespace):
            return None
        ip = next((a for a in self.addresses if a.version == svc.vip.version), None)
        return None if ip is None else Backend(ip, self.endpoint, self.host, self.host_ifname)


def _same(b: Backend, m: Member) -> bool:
    return b.endpoint == m.endpoint and b.host == m.host


def members(m: Muslin, network: str) -> list[Member]:
    """Every endpoint of the network: this host's and the other hosts' (remote-endpoints/)."""
    out = [Member.of(ep) for ep in m.endpoints(network)]
    prefix = keys.remote_endpoints(network)
    for kv in m.store.list(prefix):
        host = kv.key[len(prefix):].split("/", 1)[0]
        mem = Member.remote(network, host, kv.value)
        if mem is not None:
            out.append(mem)
    return out


def _sorted(backends: Iterable[Backend]) -> tuple[Backend, ...]:
    return tuple(sorted(backends, key=lambda b: (b.host, b.endpoint, b.ip.version, int(b.ip))))


# -- reads ----------------------------------------------------------------------------------

def _load(m: Muslin, network: str, name: str) -> tuple[Service, int] | None:
    kv = m.store.get(keys.service(network, name))
    return None if kv is None else (Service.from_dict(kv.value), kv.mod_revision)


def list_services(m: Muslin, network: str | None = None) -> list[Service]:
    return [Service.from_dict(kv.value) for kv in m.store.list(keys.services(network))]


def present(m: Muslin, network: str) -> bool:
    """Does the network have any service (cheap: one key)?"""
    return bool(m.store.keys(keys.services(network), limit=1))


def find(m: Muslin, name: str, network: str | None = None) -> Service:
    if network:
        got = _load(m, network, name)
        if got is None:
            raise NotFound(f"service {name!r} does not exist on network {network!r}")
        return got[0]
    found = [s for s in list_services(m) if s.name == name]
    if not found:
        raise NotFound(f"service {name!r} does not exist")
    if len(found) > 1:
        raise Invalid(f"service {name!r} exists on networks {', '.join(s.network for s in found)}: "
                      "say which with --network")
    return found[0]


# -- validation -------------------------------------------------------------------------------

def check_ports(ports: Iterable[ServicePort]) -> tuple[ServicePort, ...]:
    out: list[ServicePort] = []
    seen: set[tuple[int, str]] = set()
    for p in ports:
        proto = str(p.protocol).lower()
        if proto not in PROTOCOLS:
            raise Invalid(f"port {p.port}/{p.protocol}: protocol {p.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        for what, v in (("port", p.port), ("target port", p.target_port)):
            if isinstance(v, bool) or not isinstance(v, int) or not (1 if what == "port" else 0) <= v <= 65535:
                raise Invalid(f"{what} {v!r} is not a port number (1-65535)")
        if (p.port, proto) in seen:
            raise Invalid(f"port {p.port}/{proto} is given twice")
        seen.add((p.port, proto))
        out.append(ServicePort(p.port, proto, p.target_port))
    if not out:
        raise Invalid("a service needs at least one port (--port 80/tcp)")
    return tuple(out)


def check_selector(selector: dict[str, str]) -> tuple[tuple[str, str], ...]:
    if not selector:
        raise Invalid("a service needs a selector (--selector KEY=VALUE): the labels of its endpoints")
    for k, v in selector.items():
        names.check_label(k, v, "--selector")
    return tuple(sorted(selector.items()))


def check_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > NAME_MAX or "." in name or not names.is_dns_name(name):
        raise Invalid(f"service name {name!r} is invalid: one DNS label (letters, digits, '-', '_'; at most "
                      f"{NAME_MAX}), since it is also the name DNS answers")
    return name


def _service_network(m: Muslin, network: str) -> Network:
    net = m.find_network(network)
    if net is None:
        raise NotFound(f"network {network!r} does not exist")
    if not get_driver(net.driver).bridged:
        raise Invalid(f"network {network!r} (driver {net.driver}) cannot have services: they need a bridge network")
    return net


# -- service ranges -------------------------------------------------------------------------

def default_range(taken: Iterable[IPNetwork], prefix: int = RANGE_PREFIX) -> IPNetwork:
    """The first /prefix of 10.96.0.0/12 that overlaps nothing taken (pure)."""
    taken = [t for t in taken if t.version == 4]
    for cand in POOL.subnets(new_prefix=prefix):
        if not any(cand.overlaps(t) for t in taken):  # type: ignore[arg-type]
            return cand
    raise Exhausted(f"no /{prefix} left in {POOL} for a service range: give one (muslin network create "
                    "--service-range CIDR)")


def check_range(text: str, net: Network, others: Iterable[Network]) -> IPNetwork:
    try:
        r = ipaddress.ip_network(text)
    except ValueError as e:
        raise Invalid(f"service range {text!r}: {e}") from None
    if r.max_prefixlen - r.prefixlen < 2:
        raise Invalid(f"service range {r} is too small: it needs at least 2 host bits")
    for s in net.subnets:
        if s.version == r.version and s.overlaps(r):  # type: ignore[arg-type]
            raise Invalid(f"service range {r} overlaps the network's own subnet {s}")
    for o in others:
        if o.name == net.name:
            continue
        for s in [*o.subnets, *([ipaddress.ip_network(o.service_range)] if o.service_range else [])]:
            if s.version == r.version and s.overlaps(r):  # type: ignore[arg-type]
                raise Conflict(f"service range {r} overlaps {s} of network {o.name!r}")
    return r


def service_range(m: Muslin, k: Kernel, net: Network) -> tuple[IPNetwork, list[Compare], list[Any]]:
    """The network's service range; the first service chooses one that overlaps no subnet,
    service range or route of this host. With it, what keeps that choice in the network
    record (written in the same transaction as the service: a failed create leaves none)."""
    if net.service_range:
        return ipaddress.ip_network(net.service_range), [], []
    kv = m.store.get(keys.network(net.name))
    if kv is None:
        raise NotFound(f"network {net.name!r} does not exist")
    now = Network.from_dict(kv.value)
    if now.service_range:
        return ipaddress.ip_network(now.service_range), [], []
    taken: list[IPNetwork] = list(k.host_routes())
    for o in m.list_networks():
        taken += o.subnets
        if o.service_range:
            taken.append(ipaddress.ip_network(o.service_range))
    r = default_range(taken)
    return r, [Compare(kv.key, kv.mod_revision)], [Put(kv.key, now.evolve(service_range=str(r)).to_dict())]


def _vip_release(m: Muslin, svc: Service) -> tuple[list[Compare], list[Any]]:
    """What frees a service's VIP in the IPAM, for the transaction that removes it."""
    owner = owner_key(svc.network, svc.name)
    okv = m.store.get(keys.ipam_owner(owner))
    if okv is None:
        return [], []
    compares, ops = [Compare(okv.key, okv.mod_revision)], [Delete(okv.key)]
    for s, ip in okv.value:
        kv = m.store.get(keys.ipam_ip(ipaddress.ip_network(s), ipaddress.ip_address(ip)))
        if kv is not None and kv.value.get("owner") == owner:
            compares.append(Compare(kv.key, kv.mod_revision))
            ops.append(Delete(kv.key))
    return compares, ops


def _vip(m: Muslin, rng: IPNetwork, network: str, name: str, vip: IPAddress | None) -> tuple[IPAddress, Any]:
    """Take the VIP in the IPAM: (the address, what to give back on undo)."""
    owner = owner_key(network, name)
    if vip is not None:
        if vip.version != rng.version or vip not in rng or vip in (rng.network_address, rng.broadcast_address):
            raise Invalid(f"VIP {vip} is outside the service range {rng} of network {network!r}")
        m.ipam.reserve(rng, vip, owner)
        return vip, None
    from muslin.ipam.ranges import normalize_range

    alloc = m.ipam.take([(normalize_range(IPRange(rng)),)], owner)
    return alloc.addrs[0][0].ip, alloc


# -- the kernel side of a set of changes ---------------------------------------------------

def ports_of(svc: Service) -> list[SvcPort]:
    ips = tuple(b.ip for b in svc.backends)
    return [SvcPort(f"{svc.network}/{svc.name}", svc.vip, p.protocol, p.port, p.target, ips, svc.affinity)
            for p in svc.ports]


def _local_ips(svc: Service | None) -> dict[IPAddress, Backend]:
    return {b.ip: b for b in (svc.backends if svc else ()) if not b.host}


def _index_ops(old: Service | None, new: Service | None) -> list[Any]:
    ops: list[Any] = []
    for s, put in ((old, False), (new, True)):
        if s is None:
            continue
        ops.append((keys.service_selector_index(s.network, *s.selector[0]) + s.name, put))
        for ip in _local_ips(s):
            ops.append((keys.service_backend_index(ip, s.network) + s.name, put))
    want = {k for k, put in ops if put}
    return [Put(k, {}) for k in sorted(want)] + [Delete(k) for k in sorted({k for k, put in ops if not put} - want)]


def commit(m: Muslin, k: Kernel, pairs: list[tuple[tuple[Service, int] | None, Service | None]],
           steps_before: Iterable[Step] = (), leaving: Iterable[str] = (),
           txn: tuple[list[Compare], list[Any]] = ([], [])) -> None:
    """Make these changes (old with its store revision -> new; None = absent): the kernel in
    one batch, then the records and indexes in one transaction (with `txn`'s, and the VIPs
    of removed services freed). Services lock held.
    `leaving`: endpoint ids going away (their bridge ports' hairpin mode is left as it is)."""
    pairs = [(o, n) for o, n in pairs if (o[0] if o else None) != n]
    if not pairs:
        return
    if not k.services_marked():  # the first service here, or the table was replaced: all of them first
        resync(m, k, base=False)
    port_changes: list[tuple[SvcPort | None, SvcPort | None]] = []
    vips: list[tuple[IPAddress, bool]] = []
    adds: dict[IPAddress, set[str]] = {}
    drops: dict[IPAddress, set[str]] = {}
    where: dict[IPAddress, tuple[str, Backend]] = {}
    flush: list[tuple[str, IPAddress, int, IPAddress]] = []
    compares: list[Compare] = list(txn[0])
    ops: list[Any] = list(txn[1])
    for loaded, new in pairs:
        old = loaded[0] if loaded else None
        ref = new or old
        assert ref is not None
        key = keys.service(ref.network, ref.name)
        compares.append(Compare(key, loaded[1] if loaded else 0))
        ops.append(Put(key, new.to_dict()) if new else Delete(key))
        if new is None and old is not None:
            c, o = _vip_release(m, old)
            compares += c
            ops += o
        ops += _index_ops(old, new)
        olds = {p.chain: p for p in ports_of(old)} if old else {}
        news = {p.chain: p for p in ports_of(new)} if new else {}
        for c in dict.fromkeys([*olds, *news]):
            if olds.get(c) != news.get(c):
                port_changes.append((olds.get(c), news.get(c)))
        if old is None and new is not None:
            vips.append((new.vip, True))
        elif new is None and old is not None:
            vips.append((old.vip, False))
        before, after = _local_ips(old), _local_ips(new)
        for ip in after.keys() - before.keys():
            adds.setdefault(ip, set()).add(key)
            where[ip] = (ref.network, after[ip])
        for ip in before.keys() - after.keys():
            drops.setdefault(ip, set()).add(key)
            where.setdefault(ip, (ref.network, before[ip]))
        gone = {b.ip for b in (old.backends if old else ())} - {b.ip for b in (new.backends if new else ())}
        for p in (old.ports if old else ()):
            for ip in gone:
                if p.protocol != "tcp":  # a TCP connection to a backend that went ends with it
                    flush.append((p.protocol, old.vip, p.port, ip))  # type: ignore[union-attr]
    # what local backends share in the kernel lives while one service of theirs does
    local: list[tuple[IPAddress, bool]] = []
    for ip in sorted(set(adds) | set(drops), key=lambda a: (a.version, int(a))):
        users = {keys.service(*key[len(keys.service_backend_index(ip)):].split("/", 1))
                 for key in m.store.keys(keys.service_backend_index(ip))}
        after_users = (users - drops.get(ip, set())) | adds.get(ip, set())
        if bool(users) != bool(after_users):
            local.append((ip, bool(after_users)))
    changes = ServiceChanges(tuple(port_changes), tuple(vips), tuple(local))
    back = ServiceChanges(tuple((n, o) for o, n in port_changes), tuple((a, not p) for a, p in vips),
                          tuple((a, not p) for a, p in local))
    gone = set(leaving)
    hairpin_on = [where[ip] for ip, on in local if on and where[ip][1].host_ifname]
    hairpin_off = [where[ip] for ip, on in local if not on and where[ip][1].host_ifname
                   and where[ip][1].endpoint not in gone]

    def hairpin(bs: list[tuple[str, Backend]], on: bool) -> None:
        for net, b in bs:
            try:
                if k.link(b.host_ifname) is not None:
                    k.set_hairpin(b.host_ifname, on or _hairpin_default(m, net, b))
            except NotFound:
                pass  # its link went meanwhile

    run([*steps_before,
         *(Step(f"services: hairpin on {nb[1].host_ifname}", lambda nb=nb: hairpin([nb], True),
                lambda _, nb=nb: hairpin([nb], False)) for nb in hairpin_on),
         Step("services: kernel", lambda: k.services_apply(changes, m.owner),
              lambda _: k.services_apply(back, m.owner)),
         Step("services: records", lambda: m.store.txn(compares, ops))], m.timings)
    for nb in hairpin_off:
        try:
            hairpin([nb], False)
        except Exception as e:  # noqa: BLE001 - hairpin left on is harmless
            log.warning("hairpin off on %s: %s", nb[1].host_ifname, e)
    for proto, vip, port, ip in flush:
        try:
            k.conntrack_flush(proto, vip, port, ip)
        except Exception as e:  # noqa: BLE001 - the entry times out by itself
            log.warning("conntrack entries to %s:%d/%s via %s: %s", vip, port, proto, ip, e)


def _hairpin_default(m: Muslin, network: str, b: Backend) -> bool:
    """Hairpin mode a bridge port keeps without services: its network's, or on for ports."""
    ep = m.find_endpoint(network, b.endpoint)
    net = m.find_network(network)
    return bool(ep and ep.ports) or bool(net and net.hairpin)


# -- use-cases ----------------------------------------------------------------------------

def create(m: Muslin, k: Kernel, name: str, network: str, ports: Iterable[ServicePort],
           selector: dict[str, str], vip: IPAddress | str | None = None, affinity: int = 0,
           namespace: str = DEFAULT_NAMESPACE, origin: str = "") -> Service:
    """A new service; its backends are the endpoints its selector matches now (maybe none)."""
    check_name(name)
    names.check_name(network)
    ports = check_ports(ports)
    sel = check_selector(selector)
    names.check_namespace(namespace)
    if isinstance(affinity, bool) or not isinstance(affinity, int) or not 0 <= affinity <= AFFINITY_MAX:
        raise Invalid(f"affinity {affinity!r} is not a number of seconds in 0-{AFFINITY_MAX}")
    if isinstance(vip, str):
        try:
            vip = ipaddress.ip_address(vip)
        except ValueError:
            raise Invalid(f"VIP {vip!r} is not an IP address") from None
    net = _service_network(m, network)
    with m.lock(network, exclusive=False), _lock(m):
        if _load(m, network, name) is not None:
            raise Conflict(f"service {name!r} already exists on network {network!r}")
        net = _service_network(m, network)
        rng, rc, rops = service_range(m, k, net)
        addr, alloc = _vip(m, rng, network, name, vip)  # type: ignore[arg-type]
        try:
            svc = Service(name, network, addr, ports, sel, namespace, affinity, origin)
            svc = replace(svc, backends=_sorted(b for b in (mem.backend_for(svc) for mem in members(m, network)) if b))
            commit(m, k, [(None, svc)], txn=(rc, rops))
        except BaseException:
            if alloc is not None:
                m.ipam.give_back(owner_key(network, name), alloc)
            else:
                m.ipam.release(owner_key(network, name))
            raise
    return svc


def remove(m: Muslin, k: Kernel, name: str, network: str | None = None, origin: str | None = None) -> Service:
    """Remove a service (its VIP goes back). With `origin`, only a service of that origin."""
    svc = find(m, name, network)
    with _lock(m):
        got = _load(m, svc.network, svc.name)
        if got is None:
            raise NotFound(f"service {name!r} does not exist on network {svc.network!r}")
        if origin is not None and got[0].origin != origin:
            raise Conflict(f"service {name!r} of network {svc.network!r} belongs to "
                           f"{got[0].origin.removeprefix('cluster:') or 'this host'}: remove it there")
        commit(m, k, [(got, None)])
    net = m.find_network(svc.network)
    if net is not None and net.origin == "cni" and not present(m, net.name):
        from muslin.control import networks

        networks.remove_if_unused(m, k, net.name)  # a CNI network waited for its services to go
    return got[0]


def remove_all(m: Muslin, k: Kernel, network: str) -> None:
    """Every service of a network (its removal with --force)."""
    with _lock(m):
        for kv in m.store.list(keys.services(network)):
            got = (Service.from_dict(kv.value), kv.mod_revision)
            commit(m, k, [(got, None)])


def members_changed(m: Muslin, k: Kernel, changes: Iterable[tuple[Member | None, Member | None]],
                    steps_before: Iterable[Step] = ()) -> None:
    """Endpoints appeared, went or changed labels: the services they join or leave follow,
    in one batch. Candidates come from the selector index (by each endpoint's labels, before
    and after), so the cost is that of the services concerned."""
    changes = [(o, n) for o, n in changes if o != n]
    nets = {(o or n).network for o, n in changes}  # type: ignore[union-attr]
    nets = {net for net in nets if present(m, net)}
    if not nets:
        return
    with _lock(m):
        touched: dict[str, tuple[Service, int]] = {}
        for old, new in changes:
            ref = new or old
            assert ref is not None
            if ref.network not in nets:
                continue
            labels = {*(old.labels if old else ()), *(new.labels if new else ())}
            for lk, lv in labels:
                prefix = keys.service_selector_index(ref.network, lk, lv)
                for key in m.store.keys(prefix):
                    sk = keys.service(ref.network, key[len(prefix):])
                    if sk not in touched:
                        got = _load(m, ref.network, key[len(prefix):])
                        if got is not None:
                            touched[sk] = got
        if not touched:
            return
        now: dict[str, Service] = {}
        for sk, (svc, _rev) in touched.items():
            cur = now.get(sk, svc)
            bs = list(cur.backends)
            for old, new in changes:
                ref = new or old
                if ref is None or ref.network != cur.network:
                    continue
                bs = [b for b in bs if not _same(b, ref)]
                b = new.backend_for(cur) if new else None
                if b is not None:
                    bs.append(b)
            now[sk] = replace(cur, backends=_sorted(bs))
        leaving = [o.endpoint for o, n in changes if n is None and o is not None and not o.host]
        commit(m, k, [(touched[sk], now[sk]) for sk in touched], steps_before, leaving)


def endpoint_step(m: Muslin, k: Kernel, ep: Endpoint) -> Step:
    """An attach's plan step: the endpoint joins its services (undo: it leaves them)."""
    mem = Member.of(ep)
    return Step("services", lambda: members_changed(m, k, [(None, mem)]),
                lambda _: members_changed(m, k, [(mem, None)]))


def resync(m: Muslin, k: Kernel, base: bool = True) -> int:
    """The services from the store, their backends recomputed from the endpoints there, and
    the kernel made to hold exactly them (muslind at start, after the table was replaced,
    periodically). Returns how many services there are."""
    from muslin.control import firewall

    with _lock(m):
        svcs = [(Service.from_dict(kv.value), kv.mod_revision) for kv in m.store.list(keys.SERVICES)]
        by_net: dict[str, list[Member]] = {}
        fixed: list[tuple[tuple[Service, int], Service]] = []
        for svc, rev in svcs:
            mem = by_net.setdefault(svc.network, members(m, svc.network) if m.find_network(svc.network) else [])
            want = _sorted(b for b in (x.backend_for(svc) for x in mem) if b)
            if want != svc.backends:
                fixed.append(((svc, rev), replace(svc, backends=want)))
        for (svc, rev), new in fixed:  # records and indexes, without touching the kernel yet
            m.store.txn([Compare(keys.service(svc.network, svc.name), rev)],
                        [Put(keys.service(svc.network, svc.name), new.to_dict()), *_index_ops(svc, new)])
        final = {(s.network, s.name): s for s, _ in svcs}
        final.update({(n.network, n.name): n for _, n in fixed})
        if base:
            firewall.sync(m, k, services_after=False)
        ports = [p for s in final.values() for p in ports_of(s)]
        local = {ip for s in final.values() for ip in _local_ips(s)}
        if final or k.firewall_owner() is not None:
            k.services_resync(ports, [s.vip for s in final.values()], local, m.owner)
        for s in final.values():
            for b in _local_ips(s).values():
                if b.host_ifname:
                    try:
                        if k.link(b.host_ifname) is not None:
                            k.set_hairpin(b.host_ifname, True)
                    except NotFound:
                        pass
        return len(final)


def after_firewall_sync(m: Muslin, k: Kernel) -> None:
    """A base sync may have replaced the whole table (drift, a new skeleton): then the
    services are gone from the kernel and are synced again."""
    if m.store.keys(keys.SERVICES, limit=1) and not k.services_marked():
        log.info("the services' state is missing from the nft table: syncing them again")
        resync(m, k, base=False)

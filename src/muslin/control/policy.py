"""Use-cases of network policy and anti-spoofing.

Where policy objects live: the policies (`policy/networkpolicies/<ns>/<name>`) and the
namespaces' labels (`policy/namespaces/<ns>`) are in this host's store, or, for a cluster,
in the cluster store, where every host's muslind follows them (control/policy_feed.py) and
copies them under `mirror/` in its own store; the other hosts' endpoints are the copy
services use too (`remote-endpoints/`, control/service_members.py). The
firewall of a host is always compiled from its own store (control/firewall.py `desired`),
so every process of the host (CLI, muslin-cni, muslind) writes the same one.

A change is enforced when the call returns: `apply`, `delete`, a namespace's labels, an
endpoint's labels, an attach or a detach each end with one firewall sync (one nft batch of
element changes). An attach or detach costs no full sync while no policy exists: its
anti-spoofing elements are added or removed alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from muslin.control import firewall
from muslin.drivers.base import get_driver
from muslin.firewall import policy as compiler
from muslin.firewall.antispoof import Guard
from muslin.firewall.policy import PolicyEndpoint, PolicyInput
from muslin.model import keys, names
from muslin.model.errors import Conflict, Invalid, NotFound, Unsupported
from muslin.model.policy import NAME_LABEL, Namespace, NetworkPolicy, namespace_labels, parse_policy
from muslin.model.types import Endpoint, IPAddress, Network
from muslin.plan import Step
from muslin.store.base import Compare, Delete, Put, Store

if TYPE_CHECKING:
    from muslin.control.service import Muslin
    from muslin.dataplane.api import Kernel

RETRIES = 20
TXN_MAX = 100  # etcd takes at most 128 operations in one transaction


def open_store(url: str, args: Any) -> Store:
    """The cluster store at `url` (args: the etcd settings, control/settings.py)."""
    from muslin.control.settings import etcd_options
    from muslin.store import open_store as open_url

    return open_url(url, etcd_options(args))


# -- reading the policy objects -----------------------------------------------------------

def _policies(store: Store, prefix: str) -> dict[str, NetworkPolicy]:
    out = {}
    for kv in store.list(prefix):
        try:
            p = parse_policy(kv.value)
        except Invalid:
            continue  # written by something else than `apply`: never enforced half-read
        out[p.key] = p
    return out


def load_policies(store: Store) -> list[NetworkPolicy]:
    """This host's policies and the cluster's copy (the cluster's win on the same name)."""
    out = _policies(store, keys.POLICIES)
    out.update(_policies(store, keys.mirror(keys.POLICIES)))
    return [out[k] for k in sorted(out)]


def load_namespaces(store: Store, mirror: bool = True) -> dict[str, Namespace]:
    out: dict[str, Namespace] = {}
    prefixes = [keys.NAMESPACES] + ([keys.mirror(keys.NAMESPACES)] if mirror else [])
    for prefix in prefixes:
        for kv in store.list(prefix):
            if isinstance(kv.value, dict) and kv.value.get("name"):
                ns = Namespace.from_dict(kv.value)
                out[ns.name] = ns
    return out


def in_use(store: Store) -> bool:
    return bool(store.keys(keys.POLICIES, limit=1) or store.keys(keys.mirror(keys.POLICIES), limit=1))


def _local(e: Endpoint, nets: dict[str, Network]) -> PolicyEndpoint:
    net = nets.get(e.network)
    enforced = net is not None and get_driver(net.driver).bridged  # its traffic crosses our forward hook
    return PolicyEndpoint(key=f"{e.network}/{e.endpoint_id}", namespace=e.namespace, labels=e.labels,
                          addresses=tuple(a.ip for a in e.addresses),
                          ports=tuple((p.name, p.port, p.protocol) for p in e.exposed), local=enforced,
                          name=e.name or e.container_id[:12] or e.endpoint_id)


def remote_endpoints(store: Store) -> list[PolicyEndpoint]:
    """The other hosts' endpoints: this host's copy of cluster/<net>/endpoints/<host>/<id>,
    remote-endpoints/<net>/<host>/<id> (control/service_members.py keeps it, for services and
    policy alike)."""
    out = []
    prefix = keys.REMOTE_ENDPOINTS
    for kv in store.list(prefix):
        parts = kv.key[len(prefix):].split("/")
        if len(parts) < 3 or not isinstance(kv.value, dict):
            continue
        v = kv.value
        try:
            addrs = tuple(ipaddress.ip_interface(a).ip for a in v.get("addresses", ()))
            ports = tuple((str(p["name"]), int(p["port"]), str(p.get("protocol") or "tcp").lower())
                          for p in v.get("exposed") or ())
        except (ValueError, KeyError, TypeError):
            continue
        out.append(PolicyEndpoint(key=f"{parts[0]}/{v.get('endpoint_id', parts[2])}",
                                  namespace=v.get("namespace") or "default",
                                  labels=tuple(sorted(dict(v.get("labels") or {}).items())), addresses=addrs,
                                  ports=ports, local=False, name=v.get("name") or v.get("sandbox") or ""))
    return out


def policy_input(m: Muslin, endpoints: Iterable[Endpoint], nets: dict[str, Network],
                 always: bool = False) -> PolicyInput:
    """What the compiler needs, from this host's store; nothing while no policy exists."""
    pols = load_policies(m.store)
    if not pols and not always:
        return PolicyInput()
    eps = [_local(e, nets) for e in endpoints] + remote_endpoints(m.store)
    return PolicyInput(tuple(pols), tuple(load_namespaces(m.store).values()), tuple(eps))


def current_input(m: Muslin) -> PolicyInput:
    nets = {n.name: n for n in m.list_networks()}
    return policy_input(m, m.endpoints(), nets, always=True)


# -- enforcing ----------------------------------------------------------------------------

def enforce(m: Muslin) -> None:
    """One firewall sync of this host (the desired state read under the firewall lock)."""
    with m.kernel() as k:
        firewall.sync(m, k)


def guard_of(ep: Endpoint) -> Guard:
    return Guard(ep.host_ifname, ep.mac, tuple(a.ip for a in ep.addresses))


def guarded(net: Network | None, ep: Endpoint) -> bool:
    return net is not None and net.spoofcheck and get_driver(net.driver).bridged and bool(ep.host_ifname and ep.mac)


def _guard(m: Muslin, k: Kernel, add: list[Guard], remove: list[Guard]) -> None:
    with firewall.lock(m):
        try:
            k.firewall_guard(add, remove)
        except NotFound:  # no anti-spoofing table yet (an older Muslin made the firewall): all of it
            firewall.sync(m, k)


def attach_steps(m: Muslin, k: Kernel, net: Network, ep: Endpoint) -> list[Step]:
    """After an attach's record: its anti-spoofing elements, and the policy when there is any
    (the new endpoint may be selected, or a peer of others)."""
    steps = []
    if guarded(net, ep):
        g = guard_of(ep)
        steps.append(Step("anti-spoofing", lambda: _guard(m, k, [g], []), lambda _: _guard(m, k, [], [g])))
    if in_use(m.store):
        steps.append(Step("network policy", lambda: firewall.sync(m, k), lambda _: firewall.sync(m, k)))
    return steps


def detach_guard(m: Muslin, k: Kernel, net: Network | None, ep: Endpoint) -> None:
    """Before a detach forgets the record: its anti-spoofing elements out (idempotent), so a
    detach failing here is retried with the record still there. (A full sync racing in
    between may put them back; the next sync takes them out.)"""
    if guarded(net, ep):
        _guard(m, k, [], [guard_of(ep)])


def after_detach(m: Muslin, k: Kernel, net: Network | None, ep: Endpoint) -> None:
    """After a detach's record is gone: the policy (its sets without the endpoint)."""
    if in_use(m.store):
        firewall.sync(m, k)


def identity_changed(m: Muslin) -> None:
    """An endpoint's labels or namespace changed: what policy selects may have too."""
    if in_use(m.store):
        enforce(m)


# -- policies ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Applied:
    key: str
    status: str  # created, configured, unchanged


def parse_all(docs: list[Any], default_namespace: str = "default", source: str = "-") -> list[NetworkPolicy]:
    """Every document checked before anything is written (one bad field refuses them all)."""
    out: list[NetworkPolicy] = []
    seen: dict[str, int] = {}
    for i, d in enumerate(docs):
        where = f"{source}: document {i + 1}" if len(docs) > 1 else source
        p = parse_policy(d, default_namespace, where=f"{where}: policy")
        if p.key in seen:
            raise Invalid(f"{where}: policy {p.key} is also document {seen[p.key] + 1}")
        seen[p.key] = i
        out.append(p)
    if not out:
        raise Invalid(f"{source}: no NetworkPolicy in it")
    return out


def check_supported(m: Muslin, pols: Iterable[NetworkPolicy]) -> None:
    needed = {proto for p in pols for proto in p.protocols()} - {"tcp", "udp"}
    if not needed:
        return
    with m.kernel() as k:
        for proto in sorted(needed):
            if not k.protocol_supported(proto):
                who = next(p.key for p in pols if proto in p.protocols())
                raise Unsupported(f"policy {who}: protocol {proto.upper()}: this kernel has no {proto.upper()} "
                                  f"(a socket of that protocol cannot be made)")


def apply(m: Muslin, docs: list[Any], store: Store | None = None, default_namespace: str = "default",
          source: str = "-") -> list[Applied]:
    """Create or update policies (Kubernetes' `kubectl apply`): all checked first, then written
    in one transaction (etcd: per 100), then enforced on this host."""
    pols = parse_all(docs, default_namespace, source)
    check_supported(m, pols)
    target = store if store is not None else m.store
    out: list[Applied] = []
    for i in range(0, len(pols), TXN_MAX):
        out += _write(target, pols[i:i + TXN_MAX])
    if target is m.store and any(a.status != "unchanged" for a in out):
        enforce(m)
    return out


def _write(store: Store, pols: list[NetworkPolicy]) -> list[Applied]:
    for _ in range(RETRIES):
        compares, ops, out = [], [], []
        for p in pols:
            key = keys.policy(p.namespace, p.name)
            kv = store.get(key)
            old = kv.value if kv else None
            gen = int(((old or {}).get("metadata") or {}).get("generation", 0))
            same = old is not None and {**old, "metadata": {k: v for k, v in old["metadata"].items()
                                                           if k != "generation"}} == p.manifest
            compares.append(Compare(key, kv.mod_revision if kv else 0))
            if same:
                out.append(Applied(p.key, "unchanged"))
                continue
            manifest = {**p.manifest, "metadata": {**p.manifest["metadata"], "generation": gen + 1}}
            ops.append(Put(key, manifest))
            out.append(Applied(p.key, "configured" if old is not None else "created"))
        if not ops:
            return out
        try:
            store.txn(compares, ops)
            return out
        except Conflict:
            continue
    raise Conflict("the policies kept changing while applying; try again")


def split_key(text: str, default_namespace: str = "default") -> tuple[str, str]:
    ns, _, name = text.rpartition("/")
    ns = ns or default_namespace
    names.check_namespace(ns)
    if not name:
        raise Invalid(f"policy {text!r}: give NAME or NAMESPACE/NAME")
    return ns, name


def get(m: Muslin, namespace: str, name: str, store: Store | None = None) -> dict[str, Any]:
    kv = (store if store is not None else m.store).get(keys.policy(namespace, name))
    if kv is None:
        raise NotFound(f"policy {namespace}/{name} does not exist")
    return kv.value


def list_policies(m: Muslin, store: Store | None = None, namespace: str = "") -> list[dict[str, Any]]:
    return [kv.value for kv in (store if store is not None else m.store).list(keys.policies(namespace))]


def delete(m: Muslin, targets: list[tuple[str, str]], store: Store | None = None, missing_ok: bool = False) -> list[str]:
    """Delete policies (all in one transaction); NotFound for one that is not there, unless
    `missing_ok`. Returns the keys deleted."""
    target = store if store is not None else m.store
    gone = []
    for i in range(0, len(targets), TXN_MAX):
        for _ in range(RETRIES):
            compares, ops, done = [], [], []
            for ns, name in targets[i:i + TXN_MAX]:
                key = keys.policy(ns, name)
                kv = target.get(key)
                if kv is None:
                    if missing_ok:
                        continue
                    raise NotFound(f"policy {ns}/{name} does not exist")
                compares.append(Compare(key, kv.mod_revision))
                ops.append(Delete(key))
                done.append(f"{ns}/{name}")
            if not ops:
                break
            try:
                target.txn(compares, ops)
                gone += done
                break
            except Conflict:
                continue
        else:
            raise Conflict("the policies kept changing while deleting; try again")
    if target is m.store and gone:
        enforce(m)
    return gone


# -- namespaces ---------------------------------------------------------------------------------

def label_namespace(m: Muslin, namespace: str, sets: dict[str, str], drops: list[str],
                    store: Store | None = None) -> dict[str, str]:
    """Set/remove labels of a namespace (its record is made on first use). Returns its labels,
    the implicit kubernetes.io/metadata.name included."""
    namespace_labels(namespace, sets, drops)
    target = store if store is not None else m.store
    key = keys.namespace(namespace)
    sets = {k: v for k, v in sets.items() if k != NAME_LABEL}
    for _ in range(RETRIES):
        kv = target.get(key)
        labels = dict((kv.value.get("labels") or {}) if kv else {})
        labels.update(sets)
        for k in drops:
            labels.pop(k, None)
        ns = Namespace(namespace, tuple(sorted(labels.items())))
        if kv is not None and Namespace.from_dict(kv.value) == ns:
            return ns.label_map
        try:
            target.put(key, ns.to_dict(), expect=kv.mod_revision if kv else 0)
            break
        except Conflict:
            continue
    else:
        raise Conflict(f"namespace {namespace} kept changing; try again")
    if target is m.store:
        enforce(m)
    return ns.label_map


def list_namespaces(m: Muslin, store: Store | None = None) -> list[dict[str, Any]]:
    """Every namespace known here: those with labels, and those an endpoint or a policy names
    (of this host and, in a cluster, of the other hosts)."""
    target = store if store is not None else m.store
    records = load_namespaces(target, mirror=target is m.store)
    counts: dict[str, int] = {}
    for e in m.endpoints():
        counts[e.namespace] = counts.get(e.namespace, 0) + 1
    for e in remote_endpoints(m.store):
        counts[e.namespace] = counts.get(e.namespace, 0) + 1
    pols: dict[str, int] = {}
    for kv in target.list(keys.POLICIES):
        ns = kv.key[len(keys.POLICIES):].split("/", 1)[0]
        pols[ns] = pols.get(ns, 0) + 1
    out = []
    for name in sorted(set(records) | set(counts) | set(pols)):
        ns = records.get(name, Namespace(name))
        out.append({"name": name, "labels": ns.label_map, "endpoints": counts.get(name, 0),
                    "policies": pols.get(name, 0)})
    return out


# -- explain and counters ---------------------------------------------------------------------------

def _resolve(inp: PolicyInput, m: Muslin, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(what)
    except ValueError:
        pass
    found = compiler.find_endpoints(inp, what)
    if not found:
        from muslin.control import sandboxes

        sbx = [e for e in m.endpoints() if e.netns == sandboxes.path_of(what.rpartition("/")[2])]
        found = [e for e in inp.endpoints if any(e.key == f"{x.network}/{x.endpoint_id}" for x in sbx)]
    addrs = sorted({a for e in found for a in e.addresses}, key=lambda a: (a.version, a))
    if not addrs:
        raise NotFound(f"{what!r} is no endpoint (a name, NAMESPACE/NAME or an address)")
    if len({e.key for e in found}) > 1:
        raise Invalid(f"{what!r} names {len(found)} endpoints ({', '.join(e.shown for e in found)}); "
                      "give NAMESPACE/NAME or an address")
    return addrs[0]


def parse_port(text: str) -> tuple[str, int | None]:
    """'80/tcp', '53/udp', '80' (tcp), 'icmp' -> (protocol, port)."""
    port, _, proto = text.partition("/")
    proto = (proto or ("tcp" if port.isdigit() else port)).lower()
    if port.isdigit():
        n = int(port)
        if not 1 <= n <= 65535:
            raise Invalid(f"--port {text}: {n} is not in 1-65535")
        if proto not in ("tcp", "udp", "sctp"):
            raise Invalid(f"--port {text}: protocol {proto!r} is not tcp, udp or sctp")
        return proto, n
    if proto in ("icmp", "icmpv6", "any"):
        return proto, None
    raise Invalid(f"--port {text!r}: use PORT[/tcp|udp|sctp] or icmp")


def explain(m: Muslin, src: str, dst: str, port: str = "") -> dict[str, Any]:
    """Would a new connection src -> dst (on `port`) be allowed, and which policies and rules
    decide it (egress of the source, ingress of the destination)."""
    inp = current_input(m)
    s, d = _resolve(inp, m, src), _resolve(inp, m, dst)
    if s.version != d.version:
        raise Invalid(f"{src} ({s}) and {dst} ({d}) are of different IP families")
    proto, number = parse_port(port) if port else ("tcp", None)
    eg, ing = compiler.evaluate(inp, s, d, proto, number)
    if number is None and proto == "tcp":  # no port given: "any port" is what a rule without ports allows
        eg, ing = compiler.evaluate(inp, s, d, "any", None)
    out = {"source": str(s), "destination": str(d), "port": port or "any",
           "allowed": eg.allowed and ing.allowed}
    for v in (eg, ing):
        out[v.direction] = {"endpoint": v.endpoint, "isolated": v.isolated, "policies": list(v.policies),
                            "allowed_by": list(v.allowed_by), "allowed": v.allowed, "reason": v.reason}
    return out


def drop_counters(m: Muslin) -> dict[str, Any]:
    """The packets network policy dropped, per policy ({"ns/name": {"ingress": n, "egress": n}}:
    dropped at the endpoints that policy isolates), per endpoint address and direction, and the
    frames anti-spoofing dropped per rule. This is what the metrics read."""
    with m.kernel() as k:
        raw = k.firewall_counters()
    spoof = raw.pop("spoof", {})
    inp = current_input(m)
    per_policy = compiler.attribute_drops(inp, raw)
    per_endpoint: dict[str, dict[str, int]] = {}
    for set_name, per in raw.items():
        d = "ingress" if set_name.startswith("in_") else "egress"
        for addr, n in per.items():
            per_endpoint.setdefault(addr, {"ingress": 0, "egress": 0})[d] += n
    return {"policies": per_policy, "endpoints": per_endpoint, "spoofing": spoof}

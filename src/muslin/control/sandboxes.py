"""CLI sandboxes: named network namespaces under /run/netns, tracked in the store.

A sandbox joins a network once (Docker's rule); its next network gets the next free ethN;
the first network keeps the default route unless a connect asks for it.

Its endpoints carry its name (a DNS name on each network), the aliases given at connect and
its labels (kept in the sandbox record too, so `label` changes every copy at once). Its
/etc/netns/NAME/resolv.conf (what `ip netns exec NAME` shows) names the DNS servers of its
networks (muslind on each bridge network's gateway), made with the sandbox, rewritten at each
connect and disconnect, removed with it.
"""

from __future__ import annotations

from muslin.control import identity
from muslin.control.service import Muslin
from muslin.model import keys, names
from muslin.model.errors import Conflict, Invalid, NotFound
from muslin.model.types import AttachRequest, Bandwidth, Endpoint, IPAddress, NamedPort, PortMapping
from muslin.plan import Step, run


def path_of(name: str) -> str:
    return f"/run/netns/{name}"


def create(m: Muslin, name: str) -> None:
    names.check_name(name, "sandbox name")
    with m.kernel() as k:
        if k.netns_exists(path_of(name)):
            raise Conflict(f"sandbox {name!r} already exists")
        run([Step("netns", lambda: k.create_netns(name), lambda _: k.delete_netns(name)),
             Step("resolv.conf", lambda: k.netns_resolv_conf(name, resolv_text(m, [])),
                  lambda old: k.netns_resolv_conf(name, old)),
             Step("sandbox record", lambda: m.store.put(keys.sandbox(name), {"name": name, "netns": path_of(name)}))])


def resolv_text(m: Muslin, networks: list[str]) -> str:
    """resolv.conf for a sandbox on these networks (its first network's DNS first)."""
    from muslin.dns.records import client_config

    nets = [n for n in (m.find_network(name) for name in dict.fromkeys(networks)) if n is not None]
    servers, search = client_config(nets)
    lines = ["# muslin: the DNS servers of this sandbox's networks (muslind)"]
    lines += [f"nameserver {s}" for s in servers] + ([f"search {' '.join(search)}"] if search else [])
    return "\n".join(lines) + "\n"


def _update_resolv(m: Muslin, name: str) -> None:
    with m.kernel() as k:
        k.netns_resolv_conf(name, resolv_text(m, [e.network for e in endpoints_of(m, name)]))


def require(m: Muslin, name: str) -> str:
    """The path of an existing sandbox (NotFound, with what to run, otherwise)."""
    names.check_name(name, "sandbox name")
    with m.kernel() as k:
        if not k.netns_exists(path_of(name)):
            raise NotFound(f"sandbox {name!r} does not exist (muslin sandbox create {name})")
    return path_of(name)


def endpoints_of(m: Muslin, name: str) -> list[Endpoint]:
    return [e for e in m.endpoints() if e.netns == path_of(name)]


def sandbox_names(m: Muslin) -> list[str]:
    """The sandboxes' names, from the store only (shell completion)."""
    return sorted(kv.value["name"] for kv in m.store.list(keys.SANDBOXES))


def list_all(m: Muslin) -> list[dict]:
    eps = m.endpoints()
    out = []
    with m.kernel() as k:
        for kv in m.store.list(keys.SANDBOXES):
            name = kv.value["name"]
            mine = [e for e in eps if e.netns == path_of(name)]
            out.append({"name": name, "netns": path_of(name), "exists": k.netns_exists(path_of(name)),
                        "endpoints": [{"network": e.network, "ifname": e.ifname, "mac": e.mac,
                                       "addresses": [str(a) for a in e.addresses]} for e in mine]})
    return out


def remove(m: Muslin, name: str) -> None:
    """Disconnect and delete a sandbox (idempotent). Also frees addresses a crashed
    `connect` held without a record (owners 'cli/<name>/...'); its links die with the namespace."""
    names.check_name(name, "sandbox name")
    for ep in endpoints_of(m, name):
        m.detach(ep.network, ep.endpoint_id)
    with m.kernel() as k:
        k.delete_netns(name)
        k.netns_resolv_conf(name, None)
    for key in m.store.keys(keys.ipam_owner(keys.cli_owners(name))):
        m.ipam.release(key[len(keys.IPAM_OWNERS):])
    m.store.delete(keys.sandbox(name))


def next_ifname(taken: set[str]) -> str:
    return next(f"eth{i}" for i in range(len(taken) + 1) if f"eth{i}" not in taken)


def connect(m: Muslin, network: str, sandbox: str, ifname: str | None = None, ips: tuple[IPAddress, ...] = (),
            mac: str = "", ports: tuple[PortMapping, ...] = (), default_route: bool = False,
            aliases: tuple[str, ...] = (), labels: dict[str, str] | None = None, namespace: str | None = None,
            exposed: tuple[NamedPort, ...] = (), bandwidth: Bandwidth | None = None) -> Endpoint:
    for a in aliases:
        names.check_dns_name(a, "--alias")
    for k_, v_ in (labels or {}).items():
        names.check_label(k_, v_, "--label")
    if namespace is not None:
        names.check_namespace(namespace)
    path = require(m, sandbox)
    m.get_network(network)
    mine = endpoints_of(m, sandbox)
    if any(e.network == network for e in mine):
        raise Conflict(f"sandbox {sandbox!r} is already connected to network {network!r}")
    if ifname is None:
        with m.kernel() as k:
            ifname = next_ifname(set(k.sandbox_links(path)) | {e.ifname for e in mine})
    eid = f"{sandbox}/{ifname}"
    rec = m.store.get(keys.sandbox(sandbox))
    mine_labels = identity.merged_labels(dict((rec.value if rec else {}).get("labels") or {}).items(), labels)
    ns = sandbox_namespace(m, sandbox, mine, namespace)
    req = AttachRequest(network=network, endpoint_id=eid, container_id=sandbox, ifname=ifname,
                        netns=path, ips=ips, mac=mac, ports=ports, aliases=tuple(dict.fromkeys(aliases)),
                        owner=keys.cli_owner(sandbox, network, ifname), default_route=default_route,
                        name=sandbox if names.is_dns_name(sandbox) else "", labels=mine_labels, namespace=ns,
                        exposed=check_exposed(exposed), bandwidth=bandwidth or None)
    ep: list[Endpoint] = []
    text = resolv_text(m, [e.network for e in mine] + [network])
    with m.kernel() as k:
        run([Step("resolv.conf", lambda: k.netns_resolv_conf(sandbox, text),
                  lambda old: k.netns_resolv_conf(sandbox, old)),
             Step("attach", lambda: ep.append(m.attach(req)))])  # its own plan undoes itself
    return ep[0]


def sandbox_namespace(m: Muslin, sandbox: str, mine: list[Endpoint], asked: str | None) -> str:
    """A sandbox is in one namespace on all its networks: its first connect's (default
    "default"); a later connect naming another one is refused."""
    have = {e.namespace for e in mine}
    if have and asked is not None and asked not in have:
        raise Conflict(f"sandbox {sandbox!r} is in namespace {sorted(have)[0]!r} (on its other networks); "
                       f"it cannot join {asked!r} as well")
    return asked if asked is not None else (sorted(have)[0] if have else "default")


def check_exposed(exposed: tuple[NamedPort, ...]) -> tuple[NamedPort, ...]:
    from muslin.model.policy import check_port_name

    seen: set[tuple[str, str]] = set()
    for p in exposed:
        check_port_name(p.name, "--expose")
        if p.protocol not in ("tcp", "udp", "sctp"):
            raise Invalid(f"--expose {p.name}={p.port}/{p.protocol}: the protocol is not tcp, udp or sctp")
        if not 1 <= p.port <= 65535:
            raise Invalid(f"--expose {p.name}={p.port}: the port is not in 1-65535")
        if (p.name, p.protocol) in seen:
            raise Invalid(f"--expose {p.name}/{p.protocol} is given twice")
        seen.add((p.name, p.protocol))
    return tuple(exposed)


def label(m: Muslin, sandbox: str, sets: dict[str, str], drops: list[str]) -> dict[str, str]:
    """Set/remove labels of a sandbox: its record and every endpoint, in one transaction.
    Returns its labels after the change."""
    require(m, sandbox)
    key = keys.sandbox(sandbox)
    kv = m.store.get(key)
    if kv is None:
        raise NotFound(f"sandbox {sandbox!r} is not Muslin's (no record; muslin sandbox create {sandbox})")
    identity.relabel(m, [(key, kv.value)], [(e.network, e.endpoint_id) for e in endpoints_of(m, sandbox)],
                     sets, drops)
    from muslin.control import policy

    policy.identity_changed(m)  # what network policy selects may have changed
    after = m.store.get(key)
    return dict((after.value if after else {}).get("labels") or {})


def disconnect(m: Muslin, network: str, sandbox: str, ifname: str = "") -> list[str]:
    """Disconnect a sandbox from a network; returns the interfaces removed. Idempotent (not
    connected: nothing to do), but NotFound when the network or the sandbox is unknown."""
    m.get_network(network)
    require(m, sandbox)
    gone = []
    for ep in endpoints_of(m, sandbox):
        if ep.network == network and (not ifname or ep.ifname == ifname):
            m.detach(network, ep.endpoint_id)
            gone.append(ep.ifname)
    _update_resolv(m, sandbox)  # also when nothing was connected: a retry after a failure here
    return gone

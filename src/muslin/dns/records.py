"""The name table: endpoints -> what muslind's DNS answers (pure).

Each endpoint gives DNS names on its network: its `name` and `aliases` (case-insensitive),
each also as `<name>.<network>`. A query is answered from the networks of the sandbox that
asks (found by its source address; Docker's rule: a name on network A is not visible from
a sandbox that is only on B), the network the query came in on first, then the others in
name order; the first network that knows the name answers:
- with every address of that family its endpoints have there (several endpoints may share
  a name or an alias), to be shuffled for each answer;
- with NOERROR and no records when the name exists there without that family (not
  NXDOMAIN: musl would stop on it), unless a later network has that family.
Names it does not know are forwarded upstream (not from `internal` networks). PTR answers
give `<name>.<network>` for the addresses of endpoints on the asker's networks.

The table is changed in place (`put`, `remove`, `set_networks`) by one owner; each change
costs what the endpoint's names cost, not the size of the table.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

from muslin.model.names import is_dns_name
from muslin.model.types import Endpoint, IPAddress, IPNetwork, Network

TTL = 5  # seconds: a restarted container's new address is seen soon (Docker says 600, aardvark 60)


@dataclass(frozen=True, slots=True)
class DnsEndpoint:
    """What the table needs of one endpoint (local, or from another host of a cluster)."""

    network: str
    sandbox: str  # the sandbox it belongs to: all endpoints of one sandbox share it
    names: tuple[str, ...]  # DNS names on its network: its name, then its aliases
    addresses: tuple[IPAddress, ...]

    @classmethod
    def of(cls, ep: Endpoint, host: str = "") -> DnsEndpoint:
        sandbox = ep.netns or ep.container_id or ep.endpoint_id
        return cls(ep.network, f"{host}:{sandbox}" if host else sandbox, names_of(ep.name, ep.aliases),
                   tuple(a.ip for a in ep.addresses))


def remote(network: str, hostname: str, value: dict) -> DnsEndpoint | None:
    """An endpoint another host of a cluster network published (control/cluster_names.py)."""
    try:
        addrs = tuple(ipaddress.ip_interface(a).ip for a in value.get("addresses", ()))
        return DnsEndpoint(network, f"{hostname}:{value.get('sandbox') or value.get('endpoint_id', '')}",
                           names_of(str(value.get("name") or ""), [str(a) for a in value.get("aliases") or ()]),
                           addrs)
    except (ValueError, TypeError, AttributeError):
        return None


def service_entry(value: dict) -> DnsEndpoint | None:
    """A service (control/services.py): its name on its network resolves to its VIP."""
    try:
        net, name = str(value["network"]), str(value["name"])
        return DnsEndpoint(net, f"service:{net}/{name}", names_of(name, ()), (ipaddress.ip_address(value["vip"]),))
    except (KeyError, ValueError, TypeError):
        return None


def names_of(name: str, aliases: Iterable[str]) -> tuple[str, ...]:
    """The servable names among a name and aliases, in order, each once."""
    out: dict[str, None] = {}
    for n in (name, *aliases):
        if n and is_dns_name(n):
            out.setdefault(n, None)
    return tuple(out)


@dataclass(frozen=True)
class NetInfo:
    """What DNS needs of a network."""

    name: str
    internal: bool = False
    subnets: tuple[IPNetwork, ...] = ()
    listen: tuple[IPAddress, ...] = ()  # where its DNS server listens (the gateway's addresses)

    @classmethod
    def of(cls, net: Network) -> NetInfo:
        return cls(net.name, net.internal, tuple(net.subnets), listen_addresses(net))


def listen_addresses(net: Network) -> tuple[IPAddress, ...]:
    """A bridge network whose bridge holds the gateway address: DNS listens there."""
    if net.driver != "bridge" or not (net.is_gateway or net.is_default_gateway):
        return ()
    return tuple(dict.fromkeys(g.ip for g in net.gateways()))


def client_config(nets: Iterable[Network]) -> tuple[list[str], list[str]]:
    """(nameservers, search domains) for a sandbox on these networks, in their order:
    each network's DNS listen addresses (IPv4 first; resolv.conf takes 3) and its name."""
    servers: list[str] = []
    search: list[str] = []
    for net in nets:
        addrs = sorted(listen_addresses(net), key=lambda a: a.version)
        if not addrs:
            continue
        servers += [str(a) for a in addrs if str(a) not in servers]
        if net.name not in search and is_dns_name(net.name):
            search.append(net.name)
    return servers[:3], search[:6]


@dataclass
class Lookup:
    """The answer to a name: `addresses` of the asked family (empty with `exists`: NOERROR,
    no records) or nothing known (`exists` False: forward, or NXDOMAIN)."""

    addresses: list[IPAddress] = field(default_factory=list)
    exists: bool = False


class NameTable:
    """Small values on purpose (lists of endpoint keys, not dicts): ~0.9 KB per endpoint."""

    def __init__(self) -> None:
        self.nets: dict[str, NetInfo] = {}
        self.endpoints: dict[str, DnsEndpoint] = {}
        self.names: dict[str, dict[str, list[str]]] = {}  # network -> lower-case name -> endpoint keys
        self.by_addr: dict[IPAddress, list[str]] = {}  # address -> endpoint keys
        self.sandbox_nets: dict[str, list[str]] = {}  # sandbox -> its endpoints' networks (with repeats)
        self.version = 0  # bumped at every change

    # -- changes ------------------------------------------------------------------------
    def set_networks(self, nets: Iterable[NetInfo]) -> None:
        self.nets = {n.name: n for n in nets}
        self.version += 1

    def put(self, key: str, ep: DnsEndpoint) -> None:
        old = self.endpoints.get(key)
        if old == ep:
            return
        if old is not None:
            self._drop(key, old)
        self.endpoints[key] = ep
        per_net = self.names.setdefault(ep.network, {})
        for n in ep.names:
            per_net.setdefault(n.lower(), []).append(key)
        for a in ep.addresses:
            self.by_addr.setdefault(a, []).append(key)
        self.sandbox_nets.setdefault(ep.sandbox, []).append(ep.network)
        self.version += 1

    def remove(self, key: str) -> None:
        old = self.endpoints.pop(key, None)
        if old is not None:
            self._drop(key, old)
            self.version += 1

    @staticmethod
    def _unlist(d: dict, k: object, item: str) -> None:
        held = d.get(k)
        if held is not None:
            if item in held:
                held.remove(item)
            if not held:
                del d[k]

    def _drop(self, key: str, ep: DnsEndpoint) -> None:
        per_net = self.names.get(ep.network, {})
        for n in ep.names:
            self._unlist(per_net, n.lower(), key)
        if not per_net:
            self.names.pop(ep.network, None)
        for a in ep.addresses:
            self._unlist(self.by_addr, a, key)
        self._unlist(self.sandbox_nets, ep.sandbox, ep.network)

    def replace_all(self, endpoints: dict[str, DnsEndpoint], prefix: str = "") -> None:
        """The endpoints whose keys start with `prefix` become exactly these."""
        for key in [k for k in self.endpoints if k.startswith(prefix) and k not in endpoints]:
            self.remove(key)
        for key, ep in endpoints.items():
            self.put(key, ep)

    # -- questions ----------------------------------------------------------------------
    def visible(self, network: str, client: IPAddress) -> list[str]:
        """The networks whose names a client may see, the one it asked on first: those of
        the sandbox owning its address; a client no endpoint owns sees the network it asked
        on when its address is in that network's subnets (the host, say), else none."""
        sandboxes = [self.endpoints[k].sandbox for k in self.by_addr.get(client, ())]
        nets: set[str] = set()
        for sb in sandboxes:
            nets.update(self.sandbox_nets.get(sb, {}))
        if not sandboxes:
            info = self.nets.get(network)
            if info is not None and any(client in s for s in info.subnets):
                nets.add(network)
        first = [network] if network in nets else []
        return first + sorted(nets - {network})

    def resolve(self, name: str, version: int, visible: list[str]) -> Lookup:
        """The addresses of family `version` (4 or 6) for `name` (lower case, no trailing dot)."""
        out = Lookup()
        for net in visible:
            holders = self.names.get(net, {}).get(name)
            if holders is None:
                suffix = "." + net.lower()
                if name.endswith(suffix):
                    holders = self.names.get(net, {}).get(name[: -len(suffix)])
            if not holders:
                continue
            out.exists = True
            addrs = list(dict.fromkeys(a for k in holders for a in self.endpoints[k].addresses
                                       if a.version == version))
            if addrs:
                out.addresses = addrs
                return out
        return out

    def reverse(self, ip: IPAddress, visible: list[str]) -> list[str]:
        """`<name>.<network>` of the endpoints holding `ip` on visible networks (the first
        network first), each endpoint's own name first."""
        held = [self.endpoints[k] for k in self.by_addr.get(ip, ())]
        out: list[str] = []
        for net in visible:
            for ep in held:
                if ep.network == net and ep.names:
                    fq = f"{ep.names[0]}.{net}"
                    if fq not in out:
                        out.append(fq)
        return out

    def knows(self, name: str, visible: list[str]) -> bool:
        return self.resolve(name, 4, visible).exists

    def internal(self, network: str) -> bool:
        info = self.nets.get(network)
        return bool(info and info.internal)

    def listen(self) -> dict[IPAddress, str]:
        """Address -> network, for every network DNS serves."""
        out: dict[IPAddress, str] = {}
        for n in sorted(self.nets.values(), key=lambda x: x.name):
            for a in n.listen:
                out.setdefault(a, n.name)
        return out


def parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None

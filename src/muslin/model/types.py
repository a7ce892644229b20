"""Plain frozen data: networks, address ranges, routes, endpoints.

Pure: no I/O. `to_dict`/`from_dict` give the JSON form kept in the Store.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields, replace
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

DEFAULT_NAMESPACE = "default"  # an endpoint's namespace when nobody names one (Kubernetes' default)


@dataclass(frozen=True)
class IPRange:
    """One pool of addresses inside a subnet (host-local's range object)."""

    subnet: IPNetwork
    range_start: IPAddress | None = None
    range_end: IPAddress | None = None
    gateway: IPAddress | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"subnet": str(self.subnet)}
        if self.range_start is not None:
            out["rangeStart"] = str(self.range_start)
        if self.range_end is not None:
            out["rangeEnd"] = str(self.range_end)
        if self.gateway is not None:
            out["gateway"] = str(self.gateway)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> IPRange:
        def addr(k: str) -> IPAddress | None:
            return ipaddress.ip_address(d[k]) if d.get(k) else None

        return cls(ipaddress.ip_network(d["subnet"]), addr("rangeStart"), addr("rangeEnd"), addr("gateway"))


RangeSet = tuple[IPRange, ...]


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None

    def to_dict(self) -> dict[str, str]:
        return {"dst": str(self.dst), **({"gw": str(self.gw)} if self.gw else {})}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> Route:
        return cls(ipaddress.ip_network(d["dst"]), ipaddress.ip_address(d["gw"]) if d.get("gw") else None)


@dataclass(frozen=True)
class Network:
    """A Muslin network. `origin` says who made it: 'cli', 'docker' or 'cni' (a network
    implied by a CNI config, removed with its last endpoint)."""

    name: str
    driver: str = "bridge"
    bridge: str = ""
    range_sets: tuple[RangeSet, ...] = ()
    routes: tuple[Route, ...] = ()
    mtu: int = 0  # 0 = follow the host (default route's link MTU, else 1500)
    masquerade: bool = True
    internal: bool = False
    isolate: bool = True
    hairpin: bool = False
    is_gateway: bool = True
    is_default_gateway: bool = True
    parent: str = ""  # macvlan parent link
    mode: str = "bridge"  # macvlan mode
    origin: str = "cli"
    options: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    reuse_bridge: bool = False  # use an existing bridge Muslin did not make (never deleted)
    spoofcheck: bool = True  # bridged: each endpoint sends only from its own MAC and addresses
    # Chosen or made by Muslin, not asked for by the user (left out of `spec()`):
    bridge_mac: str = ""  # the bridge's fixed MAC, chosen at creation
    made: tuple[str, ...] = ()  # what Muslin added to a reused bridge ("address:10.1.0.1/24")
    service_range: str = ""  # where its services' virtual IPs come from (CIDR; '' = chosen at the first service)

    @property
    def subnets(self) -> list[IPNetwork]:
        return [r.subnet for rs in self.range_sets for r in rs]

    def gateways(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        """The gateway of each subnet as an interface address (gw/prefix), one per subnet."""
        seen: dict[IPNetwork, IPInterface] = {}
        for rs in self.range_sets:
            for r in rs:
                if r.subnet not in seen:
                    gw = r.gateway or next(r.subnet.hosts())
                    seen[r.subnet] = ipaddress.ip_interface(f"{gw}/{r.subnet.prefixlen}")
        return list(seen.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "range_sets":
                v = [[r.to_dict() for r in rs] for rs in v]
            elif f.name == "routes":
                v = [r.to_dict() for r in v]
            elif f.name in ("options", "labels"):
                v = dict(v)
            elif f.name == "made":
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Network:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["range_sets"] = tuple(tuple(IPRange.from_dict(r) for r in rs) for rs in d.get("range_sets", ()))
        kw["routes"] = tuple(Route.from_dict(r) for r in d.get("routes", ()))
        kw["options"] = tuple(sorted(dict(d.get("options", {})).items()))
        kw["labels"] = tuple(sorted(dict(d.get("labels", {})).items()))
        kw["made"] = tuple(d.get("made", ()))
        kw["service_range"] = d.get("service_range") or ""
        return cls(**kw)

    def evolve(self, **changes: Any) -> Network:
        return replace(self, **changes)

    def spec(self) -> dict[str, Any]:
        """What the user asked for: the record without what Muslin chose or made."""
        d = self.to_dict()
        for k in ("bridge_mac", "made", "service_range"):
            d.pop(k, None)
        return d


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"hostPort": self.host_port, "containerPort": self.container_port,
                "protocol": self.protocol, "hostIP": self.host_ip}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PortMapping:
        return cls(int(d["hostPort"]), int(d["containerPort"]), d.get("protocol", "tcp") or "tcp", d.get("hostIP", "") or "")


@dataclass(frozen=True)
class NamedPort:
    """A port an endpoint declares under a name (a container port, as Kubernetes names
    them): network policy resolves named ports on the endpoint that declares them."""

    name: str
    port: int
    protocol: str = "tcp"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "port": self.port, "protocol": self.protocol}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NamedPort:
        return cls(str(d["name"]), int(d["port"]), str(d.get("protocol") or "tcp").lower())

    @classmethod
    def parse(cls, text: str, what: str = "--expose") -> NamedPort:
        """NAME=PORT[/PROTO] (checked further by sandboxes.check_exposed)."""
        from muslin.model.errors import Invalid

        name, sep, rest = text.partition("=")
        port, _, proto = rest.partition("/")
        if not sep or not port.isdigit():
            raise Invalid(f"{what} {text!r}: use NAME=PORT[/tcp|udp|sctp]")
        return cls(name, int(port), (proto or "tcp").lower())


@dataclass(frozen=True)
class Bandwidth:
    """Rate limits of an endpoint, as the reference CNI `bandwidth` plugin has them: rates
    in bit/s, bursts in bits, 0 = no limit that way. Ingress is traffic into the sandbox
    (tbf on its host veth), egress traffic out of it (redirected to an ifb with a tbf).
    `model/rates.py: check_bandwidth` validates one."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    def __bool__(self) -> bool:
        return bool(self.ingress_rate or self.egress_rate)

    def to_dict(self) -> dict[str, int]:
        return {"ingressRate": self.ingress_rate, "ingressBurst": self.ingress_burst,
                "egressRate": self.egress_rate, "egressBurst": self.egress_burst}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Bandwidth | None:
        if not d:
            return None
        return cls(int(d.get("ingressRate", 0)), int(d.get("ingressBurst", 0)),
                   int(d.get("egressRate", 0)), int(d.get("egressBurst", 0)))


@dataclass(frozen=True)
class AttachRequest:
    """What a front-end asks for when it connects a sandbox to a network.

    endpoint_id: stable id of the attachment; CNI uses '<containerID>/<ifname>',
    Docker its EndpointID. netns: a path (/run/netns/x, /proc/PID/ns/net) or ''
    (Docker: the interface stays on the host until Docker moves it)."""

    network: str
    endpoint_id: str
    container_id: str
    ifname: str = "eth0"
    netns: str = ""
    ips: tuple[IPAddress, ...] = ()  # requested addresses
    mac: str = ""
    ports: tuple[PortMapping, ...] = ()
    aliases: tuple[str, ...] = ()
    host_ifname: str = ""  # '' = derived from the endpoint id
    addresses: tuple[IPInterface, ...] = ()  # already allocated elsewhere (Docker IPAM)
    mtu: int = 0
    owner: str = ""  # IPAM owner key; '' = keys.default_owner(network, endpoint_id)
    default_route: bool = False  # replace the sandbox's default route (else only when it has none)
    name: str = ""  # the sandbox's (container's) name: a DNS name on the network
    labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    namespace: str = DEFAULT_NAMESPACE
    exposed: tuple[NamedPort, ...] = ()  # named ports it declares (network policy's named ports)
    bandwidth: Bandwidth | None = None  # rate limits (bridged networks only)


@dataclass(frozen=True)
class Interface:
    """One interface of an attachment as a CNI result lists it."""

    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""  # the netns path, for the interface inside the sandbox

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mac": self.mac, "mtu": self.mtu, "sandbox": self.sandbox}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Interface:
        return cls(d["name"], d.get("mac", ""), int(d.get("mtu", 0)), d.get("sandbox", ""))


@dataclass(frozen=True)
class Endpoint:
    """A sandbox's attachment to a network, as made.

    Who it is (read by DNS, services and policy): `name` is the sandbox's own name (CLI
    sandbox, container, pod; '' when unknown), `aliases` more DNS names on this network,
    `labels` sorted (key, value) pairs, `namespace` a grouping for policy ('default')."""

    network: str
    endpoint_id: str
    container_id: str
    ifname: str
    netns: str
    host_ifname: str
    mac: str
    addresses: tuple[IPInterface, ...]
    gateways: tuple[IPAddress, ...] = ()
    routes: tuple[Route, ...] = ()  # the routes installed in the sandbox
    mtu: int = 0
    ports: tuple[PortMapping, ...] = ()
    aliases: tuple[str, ...] = ()
    ipam_owned: bool = True  # addresses allocated by Muslin's IPAM for this endpoint
    owner: str = ""  # the IPAM owner key of its addresses
    peer: str = ""  # Docker: the sandbox end while it waits on the host for Docker to move it
    interfaces: tuple[Interface, ...] = ()  # as a CNI result lists them, sandbox interface last
    name: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    namespace: str = DEFAULT_NAMESPACE
    exposed: tuple[NamedPort, ...] = ()
    bandwidth: Bandwidth | None = None

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "network": self.network, "endpoint_id": self.endpoint_id,
            "container_id": self.container_id, "ifname": self.ifname, "netns": self.netns,
            "host_ifname": self.host_ifname, "mac": self.mac,
            "addresses": [str(a) for a in self.addresses],
            "gateways": [str(g) for g in self.gateways],
            "routes": [r.to_dict() for r in self.routes], "mtu": self.mtu,
            "ports": [p.to_dict() for p in self.ports], "aliases": list(self.aliases),
            "ipam_owned": self.ipam_owned, "owner": self.owner, "peer": self.peer,
            "interfaces": [i.to_dict() for i in self.interfaces],
            "name": self.name, "labels": dict(self.labels), "namespace": self.namespace,
            "exposed": [p.to_dict() for p in self.exposed],
        }
        if self.bandwidth:
            d["bandwidth"] = self.bandwidth.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Endpoint:
        extra = d.get("extra", {})  # records written before `owner` and `peer` were fields
        return cls(
            network=d["network"], endpoint_id=d["endpoint_id"], container_id=d.get("container_id", ""),
            ifname=d.get("ifname", ""), netns=d.get("netns", ""), host_ifname=d.get("host_ifname", ""),
            mac=d.get("mac", ""),
            addresses=tuple(ipaddress.ip_interface(a) for a in d.get("addresses", ())),
            gateways=tuple(ipaddress.ip_address(g) for g in d.get("gateways", ())),
            routes=tuple(Route.from_dict(r) for r in d.get("routes", ())), mtu=d.get("mtu", 0),
            ports=tuple(PortMapping.from_dict(p) for p in d.get("ports", ())),
            aliases=tuple(d.get("aliases", ())), ipam_owned=d.get("ipam_owned", True),
            owner=d.get("owner") or extra.get("owner", ""), peer=d.get("peer") or extra.get("peer", ""),
            interfaces=tuple(Interface.from_dict(i) for i in d.get("interfaces", ())),
            name=d.get("name", ""), labels=tuple(sorted(dict(d.get("labels") or {}).items())),
            namespace=d.get("namespace") or DEFAULT_NAMESPACE, bandwidth=Bandwidth.from_dict(d.get("bandwidth")),
            exposed=tuple(NamedPort.from_dict(p) for p in d.get("exposed") or ()),
        )


# -- services: a virtual IP in front of the endpoints a selector matches --------------------

@dataclass(frozen=True)
class ServicePort:
    """One port of a service: VIP:port/protocol -> each backend's target_port (0 = the same)."""

    port: int
    protocol: str = "tcp"
    target_port: int = 0

    @property
    def target(self) -> int:
        return self.target_port or self.port

    def __str__(self) -> str:
        return f"{self.port}{':' + str(self.target_port) if self.target_port else ''}/{self.protocol}"

    def to_dict(self) -> dict[str, Any]:
        return {"port": self.port, "protocol": self.protocol, "target_port": self.target_port}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServicePort:
        return cls(int(d["port"]), str(d.get("protocol") or "tcp"), int(d.get("target_port") or 0))


@dataclass(frozen=True)
class Backend:
    """An endpoint a service sends to: on this host (`host` '') or on another host of a
    cluster network. `endpoint` is its endpoint id; `host_ifname` its bridge port here."""

    ip: IPAddress
    endpoint: str
    host: str = ""
    host_ifname: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ip": str(self.ip), "endpoint": self.endpoint, "host": self.host, "host_ifname": self.host_ifname}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Backend:
        return cls(ipaddress.ip_address(d["ip"]), str(d.get("endpoint", "")), str(d.get("host") or ""),
                   str(d.get("host_ifname") or ""))


@dataclass(frozen=True)
class Service:
    """A service of a network: its name resolves to `vip`; connections to vip:port go to one
    of the endpoints whose labels hold every `selector` pair (and whose namespace is the
    service's), on any host of the network. `origin` '' = made on this host, 'cluster:HOST' =
    another host's service of a cluster network. `backends` is what is programmed now."""

    name: str
    network: str
    vip: IPAddress
    ports: tuple[ServicePort, ...]
    selector: tuple[tuple[str, str], ...]
    namespace: str = DEFAULT_NAMESPACE
    affinity: int = 0  # seconds a client keeps its backend (0 = none)
    origin: str = ""
    backends: tuple[Backend, ...] = ()

    def selects(self, labels: dict[str, str] | tuple[tuple[str, str], ...], namespace: str) -> bool:
        have = dict(labels)
        return namespace == self.namespace and all(have.get(k) == v for k, v in self.selector)

    def spec(self) -> dict[str, Any]:
        d = self.to_dict()
        d.pop("backends")
        return d

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "network": self.network, "vip": str(self.vip),
                "ports": [p.to_dict() for p in self.ports], "selector": dict(self.selector),
                "namespace": self.namespace, "affinity": self.affinity, "origin": self.origin,
                "backends": [b.to_dict() for b in self.backends]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Service:
        return cls(name=d["name"], network=d["network"], vip=ipaddress.ip_address(d["vip"]),
                   ports=tuple(ServicePort.from_dict(p) for p in d.get("ports", ())),
                   selector=tuple(sorted(dict(d.get("selector") or {}).items())),
                   namespace=d.get("namespace") or DEFAULT_NAMESPACE, affinity=int(d.get("affinity") or 0),
                   origin=str(d.get("origin") or ""),
                   backends=tuple(Backend.from_dict(b) for b in d.get("backends", ())))

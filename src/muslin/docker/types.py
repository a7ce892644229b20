"""Typed requests and responses of Docker's remote NetworkDriver and IpamDriver API.

Pure: no I/O. Requests are parsed with `from_json` (tolerates missing/unknown fields,
`null` objects and empty bodies); responses render Docker's PascalCase with `to_json`.
Field names and shapes follow moby's drivers/remote/api and ipams/remote/api.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from muslin.model.errors import Invalid

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}
GATEWAY_TYPE = "com.docker.network.gateway"
REQUEST_ADDRESS_TYPE = "RequestAddressType"
GENERIC = "com.docker.network.generic"
INTERNAL = "com.docker.network.internal"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
PORTMAP = "com.docker.network.portmap"
EXPOSED = "com.docker.network.endpoint.exposedports"
LOCAL_SPACE = "MuslinLocal"
GLOBAL_SPACE = "MuslinGlobal"


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a dict: empty or whitespace-only bodies are `{}`; non-objects are Invalid."""
    text = raw.decode("utf-8", "replace").strip() if raw else ""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise Invalid(f"request body is not JSON: {e.msg} at char {e.pos}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise Invalid(f"request body must be a JSON object, got {type(data).__name__}")
    return data


def _str(d: dict[str, Any], key: str) -> str:
    v = d.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise Invalid(f"{key} must be a string, got {json.dumps(v)}")
    return v


def _map(d: dict[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise Invalid(f"{key} must be an object, got {json.dumps(v)}")
    return v


def _list(d: dict[str, Any], key: str) -> list[Any]:
    v = d.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise Invalid(f"{key} must be a list, got {json.dumps(v)}")
    return v


def _obj(v: Any, what: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise Invalid(f"{what} must be an object, got {json.dumps(v)}")
    return v


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


# ---------------------------------------------------------------- NetworkDriver requests


@dataclass(frozen=True)
class IPAMData:
    address_space: str = ""
    pool: str = ""
    gateway: str = ""  # CIDR with the pool's prefix, or ''
    aux_addresses: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Any) -> IPAMData:
        d = _obj(d, "IPAMData")
        aux = {str(k): str(v) for k, v in _map(d, "AuxAddresses").items()}
        return cls(_str(d, "AddressSpace"), _str(d, "Pool"), _str(d, "Gateway"), aux)

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(self.pool, strict=False)
        except ValueError:
            raise Invalid(f"pool {self.pool!r} is not a CIDR") from None

    def gateway_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if not self.gateway:
            return None
        try:
            return ipaddress.ip_interface(self.gateway).ip
        except ValueError:
            raise Invalid(f"gateway {self.gateway!r} is not an address") from None


@dataclass(frozen=True)
class CreateNetworkRequest:
    network_id: str
    options: dict[str, Any] = field(default_factory=dict)
    ipv4_data: tuple[IPAMData, ...] = ()
    ipv6_data: tuple[IPAMData, ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CreateNetworkRequest:
        return cls(_need_id(d, "NetworkID"), _map(d, "Options"),
                   tuple(IPAMData.from_json(x) for x in _list(d, "IPv4Data")),
                   tuple(IPAMData.from_json(x) for x in _list(d, "IPv6Data")))

    @property
    def generic(self) -> dict[str, str]:
        g = self.options.get(GENERIC) or {}
        if not isinstance(g, dict):
            raise Invalid(f"{GENERIC} must be an object")
        return {str(k): "" if v is None else str(v) for k, v in g.items()}

    @property
    def internal(self) -> bool:
        return _bool(self.options.get(INTERNAL, False))


@dataclass(frozen=True)
class NetworkRequest:
    """DeleteNetwork / FreeNetwork."""

    network_id: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NetworkRequest:
        return cls(_need_id(d, "NetworkID"))


@dataclass(frozen=True)
class EndpointInterface:
    address: str = ""
    address_ipv6: str = ""
    mac_address: str = ""

    @classmethod
    def from_json(cls, d: Any) -> EndpointInterface:
        d = _obj(d, "Interface")
        return cls(_str(d, "Address"), _str(d, "AddressIPv6"), _str(d, "MacAddress"))

    def addresses(self) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]:
        out = []
        for a in (self.address, self.address_ipv6):
            if a:
                try:
                    out.append(ipaddress.ip_interface(a))
                except ValueError:
                    raise Invalid(f"interface address {a!r} is not IP/prefix") from None
        return tuple(out)

    def to_json(self) -> dict[str, str]:
        out = {}
        if self.address:
            out["Address"] = self.address
        if self.address_ipv6:
            out["AddressIPv6"] = self.address_ipv6
        if self.mac_address:
            out["MacAddress"] = self.mac_address
        return out


@dataclass(frozen=True)
class CreateEndpointRequest:
    network_id: str
    endpoint_id: str
    options: dict[str, Any] = field(default_factory=dict)
    interface: EndpointInterface = field(default_factory=EndpointInterface)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CreateEndpointRequest:
        return cls(_need_id(d, "NetworkID"), _need_id(d, "EndpointID"), _map(d, "Options"),
                   EndpointInterface.from_json(d.get("Interface")))


@dataclass(frozen=True)
class EndpointRequest:
    """DeleteEndpoint, EndpointOperInfo, Leave, RevokeExternalConnectivity."""

    network_id: str
    endpoint_id: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EndpointRequest:
        return cls(_need_id(d, "NetworkID"), _need_id(d, "EndpointID"))


@dataclass(frozen=True)
class JoinRequest:
    network_id: str
    endpoint_id: str
    sandbox_key: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JoinRequest:
        return cls(_need_id(d, "NetworkID"), _need_id(d, "EndpointID"), _str(d, "SandboxKey"),
                   _map(d, "Options"))


@dataclass(frozen=True)
class ProgramExternalConnectivityRequest:
    network_id: str
    endpoint_id: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProgramExternalConnectivityRequest:
        return cls(_need_id(d, "NetworkID"), _need_id(d, "EndpointID"), _map(d, "Options"))


@dataclass(frozen=True)
class PortBinding:
    proto: str
    port: int  # container port
    host_ip: str = ""
    host_port: int = 0  # 0 = pick one
    host_port_end: int = 0  # > host_port = pick one from the range

    @classmethod
    def from_json(cls, d: Any) -> PortBinding:
        d = _obj(d, "PortBinding")
        try:
            proto_n = int(d.get("Proto") or 6)
            port = int(d.get("Port") or 0)
            hp = int(d.get("HostPort") or 0)
            hpe = int(d.get("HostPortEnd") or 0)
        except (TypeError, ValueError):
            raise Invalid(f"port binding {json.dumps(d)} has a non-numeric port") from None
        if proto_n not in PROTOCOLS or PROTOCOLS[proto_n] == "icmp":
            raise Invalid(f"port binding protocol {proto_n} is not tcp, udp or sctp")
        for what, v in (("container port", port), ("host port", hp), ("host port end", hpe)):
            if not 0 <= v <= 65535:
                raise Invalid(f"{what} {v} is out of range 0-65535")
        if port == 0:
            raise Invalid("port binding has no container port")
        host_ip = _str(d, "HostIP")
        if host_ip:
            try:
                host_ip = str(ipaddress.ip_address(host_ip))
            except ValueError:
                raise Invalid(f"host IP {host_ip!r} is not an address") from None
            if host_ip in ("0.0.0.0", "::"):
                host_ip = ""
        if hpe and hp and hpe < hp:
            raise Invalid(f"host port range {hp}-{hpe} is empty")
        return cls(PROTOCOLS[proto_n], port, host_ip, hp, hpe if hpe > hp else 0)


def port_bindings(options: dict[str, Any]) -> tuple[PortBinding, ...]:
    """The `com.docker.network.portmap` bindings in a request's Options (none if absent)."""
    v = options.get(PORTMAP)
    if v is None:
        return ()
    if not isinstance(v, list):
        raise Invalid(f"{PORTMAP} must be a list")
    return tuple(PortBinding.from_json(x) for x in v)


def _need_id(d: dict[str, Any], key: str) -> str:
    v = _str(d, key)
    if not v:
        raise Invalid(f"{key} is missing")
    if len(v) > 128 or not all(c.isalnum() or c in "-_." for c in v):
        raise Invalid(f"{key} {v[:80]!r} is not a valid ID")
    return v


# ---------------------------------------------------------------- NetworkDriver responses


@dataclass(frozen=True)
class CapabilitiesResponse:
    scope: str = "local"
    connectivity_scope: str = "local"

    def to_json(self) -> dict[str, Any]:
        return {"Scope": self.scope, "ConnectivityScope": self.connectivity_scope}


@dataclass(frozen=True)
class CreateEndpointResponse:
    interface: EndpointInterface | None = None

    def to_json(self) -> dict[str, Any]:
        if self.interface is None or not self.interface.to_json():
            return {}
        return {"Interface": self.interface.to_json()}


@dataclass(frozen=True)
class StaticRoute:
    destination: str
    route_type: int = 0  # 0 via next_hop, 1 connected
    next_hop: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Destination": self.destination, "RouteType": self.route_type}
        if self.next_hop:
            out["NextHop"] = self.next_hop
        return out


@dataclass(frozen=True)
class JoinResponse:
    src_name: str
    dst_prefix: str = "eth"
    gateway: str = ""
    gateway_ipv6: str = ""
    static_routes: tuple[StaticRoute, ...] = ()
    disable_gateway_service: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"InterfaceName": {"SrcName": self.src_name, "DstPrefix": self.dst_prefix}}
        if self.gateway:
            out["Gateway"] = self.gateway
        if self.gateway_ipv6:
            out["GatewayIPv6"] = self.gateway_ipv6
        if self.static_routes:
            out["StaticRoutes"] = [r.to_json() for r in self.static_routes]
        if self.disable_gateway_service:
            out["DisableGatewayService"] = True
        return out


@dataclass(frozen=True)
class OperInfoResponse:
    value: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"Value": dict(self.value)}


# ---------------------------------------------------------------- IpamDriver


@dataclass(frozen=True)
class IpamCapabilitiesResponse:
    requires_mac_address: bool = False
    requires_request_replay: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"RequiresMACAddress": self.requires_mac_address,
                "RequiresRequestReplay": self.requires_request_replay}


@dataclass(frozen=True)
class AddressSpacesResponse:
    local: str = LOCAL_SPACE
    global_: str = GLOBAL_SPACE

    def to_json(self) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": self.local, "GlobalDefaultAddressSpace": self.global_}


@dataclass(frozen=True)
class RequestPoolRequest:
    address_space: str = ""
    pool: str = ""
    sub_pool: str = ""
    options: dict[str, str] = field(default_factory=dict)
    v6: bool = False

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RequestPoolRequest:
        opts = {str(k): "" if v is None else str(v) for k, v in _map(d, "Options").items()}
        return cls(_str(d, "AddressSpace"), _str(d, "Pool"), _str(d, "SubPool"), opts, _bool(d.get("V6", False)))


@dataclass(frozen=True)
class RequestPoolResponse:
    pool_id: str
    pool: str
    data: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"PoolID": self.pool_id, "Pool": self.pool, "Data": dict(self.data)}


@dataclass(frozen=True)
class ReleasePoolRequest:
    pool_id: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReleasePoolRequest:
        pid = _str(d, "PoolID")
        if not pid:
            raise Invalid("PoolID is missing")
        return cls(pid)


@dataclass(frozen=True)
class RequestAddressRequest:
    pool_id: str
    address: str = ""
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RequestAddressRequest:
        pid = _str(d, "PoolID")
        if not pid:
            raise Invalid("PoolID is missing")
        opts = {str(k): "" if v is None else str(v) for k, v in _map(d, "Options").items()}
        return cls(pid, _str(d, "Address"), opts)

    @property
    def is_gateway(self) -> bool:
        return self.options.get(REQUEST_ADDRESS_TYPE) == GATEWAY_TYPE


@dataclass(frozen=True)
class RequestAddressResponse:
    address: str  # IP/prefix
    data: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"Address": self.address, "Data": dict(self.data)}


@dataclass(frozen=True)
class ReleaseAddressRequest:
    pool_id: str
    address: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReleaseAddressRequest:
        pid = _str(d, "PoolID")
        if not pid:
            raise Invalid("PoolID is missing")
        return cls(pid, _str(d, "Address"))


# ---------------------------------------------------------------- pool IDs


@dataclass(frozen=True)
class PoolId:
    """A pool ID that encodes the request: '<space>/<pool>[/<subpool>]' (Docker's own shape),
    so identical requests get identical IDs and addresses need no lookup."""

    space: str
    pool: ipaddress.IPv4Network | ipaddress.IPv6Network
    sub_pool: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def __str__(self) -> str:
        s = f"{self.space}/{self.pool}"
        return f"{s}/{self.sub_pool}" if self.sub_pool else s

    @classmethod
    def parse(cls, s: str) -> PoolId:
        parts = s.split("/")
        try:
            if len(parts) == 3:
                return cls(parts[0], ipaddress.ip_network(f"{parts[1]}/{parts[2]}"))
            if len(parts) == 5:
                return cls(parts[0], ipaddress.ip_network(f"{parts[1]}/{parts[2]}"),
                           ipaddress.ip_network(f"{parts[3]}/{parts[4]}"))
        except ValueError:
            pass
        raise Invalid(f"PoolID {s[:100]!r} is not a Muslin pool ID")

    def key(self) -> str:
        return str(self).replace("/", "%")

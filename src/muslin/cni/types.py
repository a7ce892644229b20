"""CNI request parsing: environment + stdin config -> a typed `CniRequest` (pure, no I/O).

Every error is a `CniError` carrying the CNI error code and a one-line message that names
the key (or environment variable) and the offending value:

- 1 unsupported cniVersion; 2 unsupported field (a known key with a wrong type, an
  unknown key, a reference-bridge feature Muslin does not implement); 4 bad or missing
  environment variable; 6 undecodable JSON or version string; 7 invalid configuration.

Config keys understood by `muslin-cni` (the reference `bridge` plugin's keys first):

  bridge            bridge name (default "mus-<network name>" if that fits in 15 bytes,
                    else "mus-" + the first 10 hex digits of sha1(name))
  isGateway         give the bridge the gateway address (default false)
  isDefaultGateway  also add a default route via the gateway; implies isGateway
  ipMasq            masquerade traffic leaving the network (default false)
  mtu               MTU of the veth pair (default: the host's)
  hairpinMode       let a container reach itself through a port mapping on the bridge
  promiscMode       put the bridge in promiscuous mode
  forceAddress      accepted for compatibility (Muslin always owns its bridge's address)
  ipam              {"type": "muslin-ipam" | <any IPAM plugin in CNI_PATH>, host-local keys}
  dns               copied into the result

Muslin's own keys:

  driver    bridge | macvlan | host | none | container | ipvlan (default bridge)
  network   name of an existing Muslin network to join (made by `muslin network create`
            or by Docker); its settings are used and the CNI network name is only a label
  isolate   drop traffic between this network and other Muslin networks (default true)
  internal  no traffic to or from outside the network (default false)
  master    macvlan parent link;  mode: macvlan mode (default bridge)
  dataDir   Muslin's state directory (overrides MUSLIN_STATE_DIR; default /var/lib/muslin)
  agentSocket  muslind's CNI socket, when not the default /run/muslin/muslind.sock
            (MUSLIN_AGENT_SOCKET overrides it; runtimes do not pass their environment to
            every plugin call, e.g. Podman's cleanup DEL, so a config is the safer place)

Runtime-provided inputs: requested IPs from CNI_ARGS `IP=` (comma-separated allowed),
`args.cni.ips` and `runtimeConfig.ips` (all are used, duplicates once); the MAC from
CNI_ARGS `MAC=` < `args.cni.mac` < `runtimeConfig.mac`; `runtimeConfig.portMappings`;
`runtimeConfig.aliases` (a list, or Podman's {network: [names]}).
Who the container is (DNS names, and labels for services and policy): its name from CNI_ARGS
`K8S_POD_NAME` (Podman puts the container name there), its namespace from
`K8S_POD_NAMESPACE` (default "default"), labels from `args.cni.labels`
([{"key", "value"}], Kubernetes label syntax) over containerd's
`runtimeConfig["io.kubernetes.cri.pod-annotations"]` (annotations that are not valid
labels are left out: a pod never fails on an annotation); its named ports (network
policy's named ports) from `args.cni.ports` ([{"name", "containerPort", "protocol"}]).
`macspoofchk` (default true: unlike the reference plugin, on unless turned off): each
container sends only from its own MAC and addresses, ARP and NDP included.
A network implied by a CNI config gets origin "cni" and is removed with its last endpoint.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from muslin.model import names
from muslin.model.errors import Invalid, MuslinError
from muslin.drivers.base import get_driver, names as driver_names
from muslin.model.types import Bandwidth, IPAddress, NamedPort, Network, PortMapping, RangeSet, Route

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
MUSLIN_IPAM = "muslin-ipam"

_VERSION_RE = re.compile(r"\d+(\.\d+){0,2}")  # fullmatch (re.match + $ accepts a trailing newline)

# CNI error codes
E_VERSION, E_FIELD, E_UNKNOWN_CONTAINER, E_ENV, E_IO, E_DECODE, E_CONFIG = 1, 2, 3, 4, 5, 6, 7
E_TRY_AGAIN, E_STATUS, E_STATUS_LIMITED, E_INTERNAL = 11, 50, 51, 999


class CniError(Invalid):
    """An error with an explicit CNI code (the taxonomy kind stays 'invalid')."""

    def __init__(self, code: int, message: str, details: str = "") -> None:
        super().__init__(message, details)
        self.cni_code = code


def error_code(e: BaseException) -> int:
    """The CNI code of any error: its own for MuslinError, 999 otherwise."""
    return int(getattr(e, "cni_code", E_INTERNAL)) if isinstance(e, MuslinError) else E_INTERNAL


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class CniEnv:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: tuple[tuple[str, str], ...] = ()
    path: tuple[str, ...] = ()

    def arg(self, key: str) -> str | None:
        for k, v in self.args:
            if k == key:
                return v
        return None


def validate_ifname(name: str) -> None:
    if not name:
        raise CniError(E_ENV, "CNI_IFNAME is empty: an interface name is required")
    try:
        names.check_ifname(name, "CNI_IFNAME")
    except Invalid as e:
        raise CniError(E_ENV, e.message) from None


def parse_cni_args(text: str) -> tuple[tuple[str, str], ...]:
    """CNI_ARGS 'K1=V1;K2=V2' (libcni LoadArgs: every item exactly KEY=VALUE, so no empty
    item as in 'A=1;;B=2'). Only IP, MAC and IgnoreUnknown are used; other keys are an
    error unless IgnoreUnknown=1/true is present. A key given twice, or IP=/MAC= with an
    empty value, is an error."""
    if not text:
        return ()
    pairs: list[tuple[str, str]] = []
    for item in text.split(";"):
        if item == "":
            raise CniError(E_ENV, f"CNI_ARGS {text!r} has an empty item (';;' or a ';' at an end): "
                                  f"items are KEY=VALUE separated by one ';'")
        kv = item.split("=")
        if len(kv) != 2 or not kv[0]:
            raise CniError(E_ENV, f"CNI_ARGS item {item!r} is not of the form KEY=VALUE")
        if any(k == kv[0] for k, _ in pairs):
            raise CniError(E_ENV, f"CNI_ARGS gives {kv[0]} twice")
        if kv[0] in ("IP", "MAC") and kv[1] == "":
            raise CniError(E_ENV, f"CNI_ARGS {kv[0]}= is empty: give a value or leave the key out")
        pairs.append((kv[0], kv[1]))
    keys = dict(pairs)
    ignore = keys.get("IgnoreUnknown", "").lower() in ("1", "true")
    if not ignore:
        unknown = [k for k, _ in pairs if k not in ("IP", "MAC", "IgnoreUnknown")]
        if unknown:
            raise CniError(E_ENV, f"CNI_ARGS has unknown key {unknown[0]!r} "
                                  f"(add IgnoreUnknown=1 to ignore unknown keys)")
    return tuple(pairs)


def parse_env(env: dict[str, str]) -> CniEnv:
    cmd = env.get("CNI_COMMAND", "")
    if not cmd:
        raise CniError(E_ENV, "CNI_COMMAND is not set")
    if cmd not in COMMANDS:
        raise CniError(E_ENV, f"CNI_COMMAND {cmd!r} is not one of {', '.join(COMMANDS)}")
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    if cmd in ("VERSION", "GC", "STATUS"):
        return CniEnv(cmd, path=path)
    cid = env.get("CNI_CONTAINERID", "")
    if not cid:
        raise CniError(E_ENV, "CNI_CONTAINERID is not set")
    if not names.valid_name(cid):
        raise CniError(E_ENV, f"CNI_CONTAINERID {cid!r} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    ifname = env.get("CNI_IFNAME", "")
    validate_ifname(ifname)
    netns = env.get("CNI_NETNS", "")
    if cmd in ("ADD", "CHECK") and not netns:
        raise CniError(E_ENV, f"CNI_NETNS is required for {cmd}")
    if cmd in ("ADD", "CHECK") and not netns.startswith("/"):
        raise CniError(E_ENV, f"CNI_NETNS {netns!r} is not an absolute path")
    return CniEnv(cmd, cid, netns, ifname, parse_cni_args(env.get("CNI_ARGS", "")), path)


# --------------------------------------------------------------------------- config helpers


def _fail(key: str, value: Any, want: str) -> CniError:
    return CniError(E_FIELD, f"unsupported field {key}={json.dumps(value)}: must be {want}")


def _get(d: dict[str, Any], key: str, typ: type | tuple[type, ...], want: str, default: Any, where: str = "") -> Any:
    if key not in d or d[key] is None:
        return default
    v = d[key]
    if isinstance(v, bool) and typ in (int, (int,)):
        raise _fail(where + key, v, want)
    if not isinstance(v, typ):
        raise _fail(where + key, v, want)
    return v


def _bool(d: dict[str, Any], key: str, default: bool, where: str = "") -> bool:
    return bool(_get(d, key, bool, "true or false", default, where))


def _str(d: dict[str, Any], key: str, default: str = "", where: str = "") -> str:
    return str(_get(d, key, str, "a string", default, where))


def _int(d: dict[str, Any], key: str, default: int = 0, where: str = "") -> int:
    return int(_get(d, key, int, "an integer", default, where))


def _dict(d: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    return dict(_get(d, key, dict, "an object", {}, where))


def _list(d: dict[str, Any], key: str, where: str = "") -> list[Any]:
    return list(_get(d, key, list, "a list", [], where))


def parse_version(v: Any, key: str = "cniVersion") -> str:
    """A supported version string; code 6 if it is not a version, 1 if unsupported."""
    if v is None or v == "":
        return "0.1.0"  # libcni: a config without cniVersion is 0.1.0
    if not isinstance(v, str) or not _VERSION_RE.fullmatch(v):
        raise CniError(E_DECODE, f"{key} {json.dumps(v)} is not a version string (like \"1.1.0\")")
    if v not in SUPPORTED_VERSIONS:
        raise CniError(E_VERSION, f"incompatible CNI version {v}: this plugin supports "
                                  f"{', '.join(SUPPORTED_VERSIONS)}")
    return v


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def default_bridge_name(network: str) -> str:
    """'mus-<name>' when it fits in 15 bytes, else 'mus-' + 10 hex digits of sha1(name)."""
    return names.bridge_name(network)


def _ip(key: str, value: Any) -> IPAddress:
    if not isinstance(value, str):
        raise _fail(key, value, "an IP address string")
    try:
        return ipaddress.ip_interface(value).ip  # no strip: "10.0.0.5\n" is not an address
    except ValueError:
        raise CniError(E_CONFIG, f"{key} {value!r} is not an IP address") from None


def _mac(key: str, value: Any, code: int = E_CONFIG) -> str:
    if not isinstance(value, str):
        raise _fail(key, value, "a MAC address string")
    try:
        return names.check_mac(value, key)
    except Invalid as e:
        raise CniError(code, e.message) from None


# --------------------------------------------------------------------------- the request

_RUNTIME_KEYS = {"cniVersion", "cniVersions", "name", "type", "capabilities", "runtimeConfig", "args",
                 "prevResult", "disableCheck", "disableGC", "loadOnlyInlinedPlugins", "dns", "ipam"}
_BRIDGE_KEYS = {"bridge", "isGateway", "isDefaultGateway", "ipMasq", "ipMasqBackend", "mtu", "hairpinMode",
                "promiscMode", "forceAddress", "vlan", "vlanTrunk", "preserveDefaultVlan", "macspoofchk",
                "enabledad", "disableContainerInterface", "portIsolation"}
_BANDWIDTH_KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")  # the reference bandwidth plugin's
_MUSLIN_KEYS = {*_BANDWIDTH_KEYS, "driver", "network", "isolate", "internal", "master", "mode", "dataDir", "agentSocket", "reuseBridge"}
_IPAM_KEYS = {"type", "ranges", "subnet", "rangeStart", "rangeEnd", "gateway", "routes", "dataDir", "agentSocket",
              "resolvConf"}


@dataclass(frozen=True)
class CniRequest:
    env: CniEnv
    version: str
    name: str = ""
    plugin_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    network: Network | None = None  # the network this config implies (None for VERSION)
    join: str = ""  # `network` key: an existing Muslin network
    ipam: dict[str, Any] = field(default_factory=dict)
    ipam_type: str = MUSLIN_IPAM
    range_sets: tuple[RangeSet, ...] = ()
    ipam_routes: tuple[Route, ...] = ()
    ips: tuple[IPAddress, ...] = ()
    requested: tuple[Requested, ...] = ()  # the same addresses, with where each came from
    mac: str = ""
    ports: tuple[PortMapping, ...] = ()
    aliases: tuple[str, ...] = ()
    dns: dict[str, Any] = field(default_factory=dict)
    prev_result: dict[str, Any] | None = None
    valid_attachments: tuple[tuple[str, str], ...] | None = None
    data_dir: str = ""
    mtu: int = 0
    pod_name: str = ""  # K8S_POD_NAME: the container's (pod's) name
    namespace: str = "default"  # K8S_POD_NAMESPACE
    labels: tuple[tuple[str, str], ...] = ()
    exposed: tuple[NamedPort, ...] = ()  # args.cni.ports: named container ports (network policy)
    bandwidth: Bandwidth | None = None

    @property
    def command(self) -> str:
        return self.env.command

    @property
    def owner(self) -> str:
        """The IPAM owner key of this attachment."""
        return f"cni/{self.env.container_id}/{self.env.ifname}"

    @property
    def endpoint_id(self) -> str:
        return f"{self.env.container_id}/{self.env.ifname}"

    @property
    def delegates_ipam(self) -> bool:
        return self.ipam_type not in ("", MUSLIN_IPAM)

    @property
    def network_name(self) -> str:
        """The Muslin network the attachment belongs to."""
        return self.join or self.name


def decode_config(stdin: bytes) -> dict[str, Any]:
    try:
        text = stdin.decode("utf-8")
    except UnicodeDecodeError:
        raise CniError(E_DECODE, "config on stdin is not UTF-8 text") from None
    if not text.strip():
        raise CniError(E_DECODE, "config on stdin is empty: a JSON object is required")
    try:
        conf = json.loads(text)
    except ValueError as e:
        raise CniError(E_DECODE, f"config on stdin is not valid JSON: {e}") from None
    except RecursionError:
        raise CniError(E_DECODE, "config on stdin is nested too deeply to decode") from None
    if not isinstance(conf, dict):
        raise CniError(E_DECODE, f"config on stdin must be a JSON object, got {type(conf).__name__}")
    return conf


def _args_cni(conf: dict[str, Any]) -> dict[str, Any]:
    """`args.cni` (other content under `args` is ignored, as the conventions ask; what is
    under `args.cni` is the conventions' and must have their types)."""
    return _dict(_dict(conf, "args"), "cni", "args.")


# A requested address: (where it came from, the address, its prefix length or None, the
# CNI code for an error about it).
Requested = tuple[str, IPAddress, int | None, int]


def _requested_one(where: str, text: str, code: int) -> Requested:
    try:
        iface = ipaddress.ip_interface(text)  # no strip: "10.0.0.5\n" is not an address
    except ValueError:
        raise CniError(code, f"{where} {text!r} is not an IP address") from None
    return where, iface.ip, (iface.network.prefixlen if "/" in text else None), code


def _requested(env: CniEnv, conf: dict[str, Any]) -> tuple[Requested, ...]:
    """Every requested address, in order: CNI_ARGS IP=, args.cni.ips, runtimeConfig.ips.
    One source naming an address twice is an error; several sources may agree."""
    out: list[Requested] = []

    def add(source: list[Requested]) -> None:
        for i, a in enumerate(source):
            if any(b[1] == a[1] for b in source[:i]):
                raise CniError(a[3], f"{a[0]} names {a[1]} twice")
        out.extend(a for a in source if all(b[1] != a[1] for b in out))

    ip_arg = env.arg("IP")
    if ip_arg is not None:
        parts = ip_arg.split(",")
        if any(p == "" for p in parts):
            raise CniError(E_ENV, f"CNI_ARGS IP={ip_arg!r} has an empty address in its list")
        add([_requested_one("CNI_ARGS IP", p, E_ENV) for p in parts])
    add(_ip_list(_args_cni(conf), "ips", "args.cni."))
    add(_ip_list(_dict(conf, "runtimeConfig"), "ips", "runtimeConfig."))
    return tuple(out)


def _ip_list(d: dict[str, Any], key: str, where: str) -> list[Requested]:
    out: list[Requested] = []
    for i, v in enumerate(_list(d, key, where)):
        w = f"{where}{key}[{i}]"
        if not isinstance(v, str):
            raise _fail(w, v, "an IP address string")
        out.append(_requested_one(w, v, E_CONFIG))
    return out


def check_requested_prefixes(requested: tuple[Requested, ...], sets: tuple[RangeSet, ...]) -> None:
    """A requested address written with a prefix ('10.1.0.5/24') must carry the prefix of
    the subnet it falls in: 'IP=10.1.0.5/8' on 10.1.0.0/24 is an error."""
    for where, ip, plen, code in requested:
        if plen is None:
            continue
        for rs in sets:
            subnet = next((r.subnet for r in rs if r.subnet.version == ip.version and ip in r.subnet), None)
            if subnet is not None and subnet.prefixlen != plen:
                raise CniError(code, f"{where} {ip}/{plen} does not match the prefix of its subnet {subnet} "
                                     f"(give {ip} or {ip}/{subnet.prefixlen})")


def _requested_mac(env: CniEnv, conf: dict[str, Any]) -> str:
    mac = ""
    m = env.arg("MAC")
    if m is not None:
        mac = _mac("CNI_ARGS MAC", m, E_ENV)
    cni_args = _args_cni(conf)
    if _str(cni_args, "mac", "", "args.cni."):  # "" or null: not given
        mac = _mac("args.cni.mac", cni_args["mac"])
    rc = _dict(conf, "runtimeConfig")
    if _get(rc, "mac", str, "a MAC address string", "", "runtimeConfig."):
        mac = _mac("runtimeConfig.mac", rc["mac"])
    return mac


def _go_keys(d: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Keys matched as Go's encoding/json matches struct fields: exact first, else ignoring
    case. containerd 1.6 (go-cni) sends portMappings as {"HostPort", "ContainerPort",
    "Protocol", "HostIP"}, which the reference portmap plugin reads that way."""
    out = dict(d)
    for n in names:
        if n not in out:
            for k in d:
                if k.lower() == n.lower():
                    out[n] = d[k]
                    break
    return out


def _ports(conf: dict[str, Any]) -> tuple[PortMapping, ...]:
    rc = _dict(conf, "runtimeConfig")
    out: list[PortMapping] = []
    for i, p in enumerate(_list(rc, "portMappings", "runtimeConfig.")):
        where = f"runtimeConfig.portMappings[{i}]"
        if not isinstance(p, dict):
            raise _fail(where, p, "an object")
        p = _go_keys(p, ("hostPort", "containerPort", "protocol", "hostIP"))
        hp = _int(p, "hostPort", 0, where + ".")
        cp = _int(p, "containerPort", 0, where + ".")
        proto = _str(p, "protocol", "tcp", where + ".").lower() or "tcp"
        hip = _str(p, "hostIP", "", where + ".")
        for k, v in (("hostPort", hp), ("containerPort", cp)):
            if not 1 <= v <= 65535:
                raise CniError(E_CONFIG, f"{where}.{k} {v} is not a port number (1-65535)")
        if proto not in ("tcp", "udp", "sctp"):
            raise CniError(E_CONFIG, f"{where}.protocol {proto!r} is not tcp, udp or sctp")
        if hip:
            _ip(where + ".hostIP", hip)
        out.append(PortMapping(hp, cp, proto, hip))
    return tuple(out)


def _bandwidth(conf: dict[str, Any]) -> Bandwidth | None:
    """The reference bandwidth plugin's keys: `runtimeConfig.bandwidth` (the capability)
    when given, else the same four keys at the top level; rates bit/s, bursts bits."""
    from muslin.model.rates import check_bandwidth

    rc = _dict(conf, "runtimeConfig")
    where, src = "", conf
    if rc.get("bandwidth") is not None:
        where, src = "runtimeConfig.bandwidth.", _dict(rc, "bandwidth", "runtimeConfig.")
    vals = []
    for k in _BANDWIDTH_KEYS:
        v = _int(src, k, 0, where)
        if v < 0:
            raise CniError(E_CONFIG, f"{where}{k} {v}: must be a non-negative integer")
        vals.append(v)
    bw = Bandwidth(*vals)
    try:
        check_bandwidth(bw, where)
    except Invalid as e:
        raise CniError(E_CONFIG, e.message) from None
    return bw if bw else None


def _aliases(conf: dict[str, Any], name: str) -> tuple[str, ...]:
    rc = _dict(conf, "runtimeConfig")
    a = rc.get("aliases")
    if a is None:
        return ()
    if isinstance(a, dict):  # Podman: {"<network>": ["name", ...]}
        a = a.get(name) or []
    if not isinstance(a, list) or not all(isinstance(x, str) for x in a):
        raise _fail("runtimeConfig.aliases", rc.get("aliases"), "a list of names")
    for x in a:
        if not names.is_dns_name(x):
            raise CniError(E_CONFIG, f"runtimeConfig.aliases: {x!r} is not a DNS name (labels of letters, digits, "
                                     "'_', '-', 1-63 characters each, separated by '.')")
    return tuple(dict.fromkeys(a))


POD_ANNOTATIONS = "io.kubernetes.cri.pod-annotations"


def _labels(conf: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    rc = _dict(conf, "runtimeConfig")
    ann = rc.get(POD_ANNOTATIONS)
    if isinstance(ann, dict):
        for k, v in ann.items():
            if isinstance(v, str) and names.is_label_key(k) and names.is_label_value(v):
                out[k] = v
    raw = _args_cni(conf).get("labels")
    if raw is not None:
        if not isinstance(raw, list):
            raise _fail("args.cni.labels", raw, 'a list of {"key": ..., "value": ...}')
        for i, item in enumerate(raw):
            where = f"args.cni.labels[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("key"), str) \
                    or not isinstance(item.get("value", ""), str):
                raise _fail(where, item, 'an object {"key": string, "value": string}')
            try:
                k, v = names.check_label(item["key"], item.get("value", ""), where)
            except Invalid as e:
                raise CniError(E_CONFIG, e.message) from None
            out[k] = v
    return tuple(sorted(out.items()))


def _exposed(conf: dict[str, Any]) -> tuple[NamedPort, ...]:
    """`args.cni.ports`: the container's named ports, as Kubernetes' container ports
    ([{"name": "http", "containerPort": 80, "protocol": "TCP"}]); unnamed ones are left out."""
    from muslin.model.policy import is_port_name

    raw = _args_cni(conf).get("ports")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail("args.cni.ports", raw, 'a list of {"name": ..., "containerPort": ..., "protocol": ...}')
    out: dict[tuple[str, str], NamedPort] = {}
    for i, item in enumerate(raw):
        where = f"args.cni.ports[{i}]"
        if not isinstance(item, dict):
            raise _fail(where, item, 'an object {"name": string, "containerPort": number, "protocol": string}')
        port = item.get("containerPort")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise _fail(f"{where}.containerPort", port, "a port number in 1-65535")
        proto = item.get("protocol") or "TCP"
        if not isinstance(proto, str) or proto.upper() not in ("TCP", "UDP", "SCTP"):
            raise _fail(f"{where}.protocol", proto, "TCP, UDP or SCTP")
        name = item.get("name") or ""
        if not isinstance(name, str):
            raise _fail(f"{where}.name", name, "a port name")
        if not name:
            continue
        if not is_port_name(name):
            raise CniError(E_CONFIG, f"{where}.name {name!r} is not a port name (1-15 lower-case letters, digits "
                                     "and '-', at least one letter)")
        out.setdefault((name, proto.lower()), NamedPort(name, port, proto.lower()))
    return tuple(out.values())


def _identity(env: CniEnv) -> tuple[str, str]:
    """(name, namespace) from K8S_POD_NAME / K8S_POD_NAMESPACE."""
    ns = env.arg("K8S_POD_NAMESPACE") or "default"
    if not names.NAMESPACE_RE.fullmatch(ns):
        raise CniError(E_ENV, f"CNI_ARGS K8S_POD_NAMESPACE={ns!r} is not a Kubernetes namespace name")
    return env.arg("K8S_POD_NAME") or "", ns


def _valid_attachments(conf: dict[str, Any]) -> tuple[tuple[str, str], ...] | None:
    key = "cni.dev/valid-attachments" if "cni.dev/valid-attachments" in conf else "cni.dev/attachments"
    if key not in conf:
        return None
    v = conf[key]
    if v is None:
        return ()
    if not isinstance(v, list):
        raise _fail(key, v, "a list of {containerID, ifname}")
    out: list[tuple[str, str]] = []
    for i, a in enumerate(v):
        if not isinstance(a, dict):
            raise _fail(f"{key}[{i}]", a, "an object {containerID, ifname}")
        cid, ifname = _str(a, "containerID", "", f"{key}[{i}]."), _str(a, "ifname", "", f"{key}[{i}].")
        for k, val in (("containerID", cid), ("ifname", ifname)):
            if not val:
                raise CniError(E_CONFIG, f"{key}[{i}].{k} is missing: every valid attachment needs a "
                                         f"containerID and an ifname")
        out.append((cid, ifname))
    return tuple(out)


def _ipam_routes(ipam: dict[str, Any]) -> tuple[Route, ...]:
    out: list[Route] = []
    for i, r in enumerate(_list(ipam, "routes", "ipam.")):
        where = f"ipam.routes[{i}]"
        if not isinstance(r, dict):
            raise _fail(where, r, "an object {dst, gw}")
        dst = _str(r, "dst", "", where + ".")
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            raise CniError(E_CONFIG, f"{where}.dst {dst!r} is not a CIDR") from None
        gw = _str(r, "gw", "", where + ".")
        out.append(Route(net, _ip(where + ".gw", gw) if gw else None))
    return tuple(out)


def _range_sets(ipam: dict[str, Any], rc: dict[str, Any]) -> tuple[RangeSet, ...]:
    from muslin.ipam.ranges import parse_ipam_ranges, parse_range_sets, validate_range_sets

    try:
        sets = parse_ipam_ranges(ipam)
        extra = rc.get("ipRanges")
        if extra:  # capability ipRanges: prepended to the configured ranges
            sets = validate_range_sets(parse_range_sets(extra, "runtimeConfig.ipRanges") + tuple(sets))
    except CniError:
        raise
    except Invalid as e:
        raise CniError(E_CONFIG, e.message) from None
    return tuple(sets)


def _check_known(conf: dict[str, Any], allowed: set[str], where: str = "") -> None:
    for k, v in conf.items():
        if k in allowed or k.startswith("cni.dev/"):
            continue
        raise CniError(E_FIELD, f"unsupported field {where}{k}={json.dumps(v)}: not a key this plugin knows")


def _unsupported_bridge_features(conf: dict[str, Any]) -> None:
    for key, off in (("vlan", 0), ("vlanTrunk", []),
                     ("disableContainerInterface", False), ("portIsolation", False)):
        v = conf.get(key)
        if v is None or v == off:
            continue
        raise CniError(E_FIELD, f"unsupported field {key}={json.dumps(v)}: Muslin's bridge does not implement it")
    for key in ("preserveDefaultVlan", "enabledad"):
        _bool(conf, key, False)
    backend = _str(conf, "ipMasqBackend")
    if backend not in ("", "iptables", "nftables"):
        raise CniError(E_CONFIG, f"ipMasqBackend {backend!r} is not iptables or nftables")


def parse_request(env: dict[str, str], stdin: bytes, ipam_plugin: bool = False) -> CniRequest:
    """Parse and validate a whole invocation. `ipam_plugin` = invoked as muslin-ipam."""
    cenv = parse_env(env)
    if cenv.command == "VERSION":
        try:
            conf = json.loads(stdin.decode("utf-8") or "{}")
            v = conf.get("cniVersion") if isinstance(conf, dict) else None
            version = v if isinstance(v, str) and v in SUPPORTED_VERSIONS else CURRENT_VERSION
        except (ValueError, RecursionError):
            version = CURRENT_VERSION
        return CniRequest(env=cenv, version=version)
    conf = decode_config(stdin)
    version = parse_version(conf.get("cniVersion"))
    vt = version_tuple(version)
    if cenv.command == "CHECK" and vt < (0, 4, 0):
        raise CniError(E_VERSION, f"CHECK is not supported by cniVersion {version} (needs 0.4.0 or later)")
    if cenv.command in ("GC", "STATUS") and vt < (1, 1, 0):
        raise CniError(E_VERSION, f"{cenv.command} is not supported by cniVersion {version} (needs 1.1.0)")
    name = _str(conf, "name")
    if not name:
        raise CniError(E_CONFIG, "name is missing: the network configuration needs a name")
    if not names.valid_name(name):
        raise CniError(E_CONFIG, f"name {name!r} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    ptype = _str(conf, "type")
    for k in ("disableCheck", "disableGC", "loadOnlyInlinedPlugins"):
        _bool(conf, k, False)
    _get(conf, "cniVersions", list, "a list of version strings", [])
    _dict(conf, "capabilities")
    rc = _dict(conf, "runtimeConfig")
    _dict(conf, "args")
    prev = _get(conf, "prevResult", dict, "a result object", None)
    ipam = _dict(conf, "ipam")
    _check_known(ipam, _IPAM_KEYS | _extra_ipam_keys(ipam), "ipam.")
    ipam_type = _str(ipam, "type", "", "ipam.")
    if ipam_plugin:
        ipam_type = MUSLIN_IPAM
        allowed = _RUNTIME_KEYS | _BRIDGE_KEYS | _MUSLIN_KEYS | set(conf)  # the main plugin's keys are not ours
    else:
        allowed = _RUNTIME_KEYS | _BRIDGE_KEYS | _MUSLIN_KEYS
        ipam_type = ipam_type or MUSLIN_IPAM
    _check_known(conf, allowed)
    dns = _dict(conf, "dns")
    data_dir = _data_dir(conf, ipam, ipam_type, ipam_plugin)
    _path(conf, "agentSocket")
    if ipam_type in (MUSLIN_IPAM, "host-local"):  # keys whose meaning Muslin knows
        _path(ipam, "agentSocket", "ipam.")
        _str(ipam, "gateway", "", "ipam.")
        _str(ipam, "rangeStart", "", "ipam.")
        _str(ipam, "rangeEnd", "", "ipam.")
        _path(ipam, "resolvConf", "ipam.")
    req = dict(
        env=cenv, version=version, name=name, plugin_type=ptype, config=conf, ipam=ipam, ipam_type=ipam_type,
        dns=dns, prev_result=prev, data_dir=data_dir,
        valid_attachments=_valid_attachments(conf) if cenv.command == "GC" else None,
    )
    routes: tuple[Route, ...] = ()
    sets: tuple[RangeSet, ...] = ()
    if ipam_type in (MUSLIN_IPAM, "host-local"):  # same config format: Muslin knows the subnets
        routes = _ipam_routes(ipam)
        sets = _range_sets(ipam, rc)
    if cenv.command in ("ADD", "CHECK", "DEL"):
        requested = _requested(cenv, conf)
        check_requested_prefixes(requested, sets)
        pod_name, namespace = _identity(cenv)
        req.update(ips=tuple(a[1] for a in requested), requested=requested, mac=_requested_mac(cenv, conf),
                   ports=_ports(conf), aliases=_aliases(conf, name), pod_name=pod_name, namespace=namespace,
                   labels=_labels(conf), exposed=_exposed(conf), bandwidth=_bandwidth(conf))
    if ipam_plugin:
        if not sets:
            raise CniError(E_CONFIG, "ipam.ranges is missing: muslin-ipam needs at least one range set "
                                     "(or ipam.subnet)")
        return CniRequest(**req, range_sets=sets, ipam_routes=routes)  # type: ignore[arg-type]
    network, join, mtu = _network(conf, name, sets, routes)
    return CniRequest(**req, range_sets=sets, ipam_routes=routes, network=network, join=join,  # type: ignore[arg-type]
                      mtu=mtu)


def _path(d: dict[str, Any], key: str, where: str = "") -> str:
    """An absolute path (a relative one would resolve against the caller's working
    directory); null or "" = not given."""
    v = _str(d, key, "", where)
    if v and not v.startswith("/"):
        raise CniError(E_CONFIG, f"{where}{key} {v!r} is not an absolute path")
    if v and not v.isprintable():
        raise CniError(E_CONFIG, f"{where}{key} {v!r} contains control characters")
    return v


def _data_dir(conf: dict[str, Any], ipam: dict[str, Any], ipam_type: str, ipam_plugin: bool) -> str:
    """Muslin's state dir from the config: top-level dataDir, or ipam.dataDir when the IPAM is
    Muslin's own (a delegated IPAM plugin's dataDir is that plugin's, not Muslin's)."""
    top = _path(conf, "dataDir")
    own = ipam_plugin or ipam_type == MUSLIN_IPAM
    low = _path(ipam, "dataDir", "ipam.") if own or ipam_type == "host-local" else ""
    if not own or (ipam_plugin and low == "/var/lib/cni/networks"):
        low = ""  # host-local's default dir is not Muslin's state dir
    if top and low and top.rstrip("/") != low.rstrip("/"):
        raise CniError(E_CONFIG, f"dataDir {top} and ipam.dataDir {low} differ: Muslin keeps one state directory")
    return top or low


def _extra_ipam_keys(ipam: dict[str, Any]) -> set[str]:
    # A foreign IPAM plugin (dhcp, static, whereabouts...) has its own keys: not ours to judge.
    t = ipam.get("type")
    return set(ipam) if isinstance(t, str) and t not in ("", MUSLIN_IPAM, "host-local") else set()


def _network(conf: dict[str, Any], name: str, sets: tuple[RangeSet, ...],
             routes: tuple[Route, ...]) -> tuple[Network, str, int]:
    driver = _str(conf, "driver", "bridge")
    if driver not in driver_names():
        raise CniError(E_CONFIG, f"driver {driver!r} is not one of {', '.join(driver_names())}")
    join = _str(conf, "network")
    if join and not names.valid_name(join):
        raise CniError(E_CONFIG, f"network {join!r} is not a valid network name")
    bridge = _str(conf, "bridge")
    if bridge:
        try:
            names.check_bridge_name(bridge, "bridge")  # what the kernel and the nft sets both take
        except Invalid as e:
            raise CniError(E_CONFIG, e.message) from None
    mtu = _int(conf, "mtu", 0)
    if mtu and not 68 <= mtu <= 65535:
        raise CniError(E_CONFIG, f"mtu {mtu} is out of range (68-65535)")
    if mtu and mtu < 1280 and any(r.subnet.version == 6 for rs in sets for r in rs):
        raise CniError(E_CONFIG, f"mtu {mtu} is too small for IPv6, which needs at least 1280")
    is_default_gw = _bool(conf, "isDefaultGateway", False)
    is_gw = _bool(conf, "isGateway", False) or is_default_gw
    hairpin = _bool(conf, "hairpinMode", False)
    promisc = _bool(conf, "promiscMode", False)
    if hairpin and promisc:
        raise CniError(E_CONFIG, "hairpinMode and promiscMode cannot both be true")
    force = _bool(conf, "forceAddress", False)
    masq = _bool(conf, "ipMasq", False)
    isolate = _bool(conf, "isolate", True)
    internal = _bool(conf, "internal", False)
    master = _str(conf, "master")
    mode = _str(conf, "mode", "bridge")
    modes = get_driver(driver).modes
    if modes and mode not in modes:
        raise CniError(E_CONFIG, f"mode {mode!r} is not one of {', '.join(modes)} (driver {driver})")
    _unsupported_bridge_features(conf)
    options: dict[str, str] = {}
    if promisc:
        options["promisc"] = "true"
    if force:
        options["forceAddress"] = "true"
    net = Network(
        name=name, driver=driver, bridge=(bridge or default_bridge_name(name)) if get_driver(driver).bridged else "",
        range_sets=sets, routes=routes, mtu=mtu, masquerade=masq, internal=internal, isolate=isolate,
        hairpin=hairpin, is_gateway=is_gw, is_default_gateway=is_default_gw, parent=master, mode=mode,
        origin="cni", options=tuple(sorted(options.items())), reuse_bridge=_bool(conf, "reuseBridge", False),
        spoofcheck=_bool(conf, "macspoofchk", True),  # on unless the config turns it off (MAC, IP, ARP/NDP)
    )
    driver_ = get_driver(driver)
    if not join and (sets or not driver_.needs_subnet):  # with a foreign IPAM the subnets come later
        try:
            driver_.check(net)
        except CniError:
            raise
        except Invalid as e:
            raise CniError(E_CONFIG, e.message) from None
    return net, join, mtu

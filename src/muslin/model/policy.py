"""Network policy as plain data: Kubernetes' networking.k8s.io/v1 NetworkPolicy, and
namespaces with labels (pure).

`parse_policy(doc)` takes a NetworkPolicy manifest exactly as Kubernetes does (`kubectl get
-o yaml` output included) and checks it as the API server would: an unknown field, a bad
selector operator, `endPort` below `port` or with a named port, a CIDR with host bits, an
`except` outside its `cidr`... raise `Invalid` with one line naming the field. Defaults are
Kubernetes': `policyTypes` inferred (Ingress, plus Egress when `egress` has rules), a port's
protocol TCP, a namespace "default".

Semantics (what `Selector.matches`, `Peer` and `Rule` mean) are Kubernetes': an empty
selector selects everything, `from`/`to`/`ports` empty or absent mean any, `podSelector` and
`namespaceSelector` in one peer are both required (AND), peers of one rule are alternatives
(OR), an ipBlock is its cidr less its excepts.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from muslin.model import names
from muslin.model.errors import Invalid
from muslin.model.types import DEFAULT_NAMESPACE, IPNetwork

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
NAME_LABEL = "kubernetes.io/metadata.name"  # every namespace's implicit label (as in Kubernetes)
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
PROTOCOLS = ("TCP", "UDP", "SCTP")
POLICY_TYPES = ("Ingress", "Egress")
# Kubernetes' IANA_SVC_NAME: 1-15 lower-case letters, digits and '-', at least one letter,
# no '-' at either end and no '--'.
PORT_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?")
SUBDOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
# ObjectMeta fields a manifest may carry (what `kubectl get -o yaml` prints); only name,
# namespace, labels and annotations mean something here, the rest is accepted and dropped.
_META = {"name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
         "creationTimestamp", "managedFields", "selfLink", "finalizers", "ownerReferences", "generateName",
         "deletionTimestamp", "deletionGracePeriodSeconds"}


def is_port_name(name: str) -> bool:
    return (isinstance(name, str) and bool(PORT_NAME_RE.fullmatch(name)) and "--" not in name
            and any(c.isalpha() for c in name))


def check_port_name(name: str, what: str) -> str:
    if not is_port_name(name):
        raise Invalid(f"{what}: {name!r} is not a port name (1-15 lower-case letters, digits and '-', "
                      "at least one letter, no '-' at either end or twice in a row)")
    return name


# -- selectors -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist

    def describe(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        op = "in" if self.operator == "In" else "notin"
        return f"{self.key} {op} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """A Kubernetes label selector; the empty one selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and \
            all(r.matches(labels) for r in self.match_expressions)

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels] + [r.describe() for r in self.match_expressions]
        return ",".join(parts) or "{}"


# -- peers, ports, rules -----------------------------------------------------------------------

@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def networks(self) -> list[IPNetwork]:
        """The cidr less its excepts, as few non-overlapping prefixes as that takes."""
        out = [self.cidr]
        for ex in self.excepts:
            nxt: list[IPNetwork] = []
            for n in out:
                if ex.version == n.version and ex.subnet_of(n):  # type: ignore[arg-type]
                    nxt.extend(n.address_exclude(ex))  # type: ignore[arg-type]
                elif n.version == ex.version and n.subnet_of(ex):  # type: ignore[arg-type]
                    continue
                else:
                    nxt.append(n)
            out = nxt
        return sorted(ipaddress.collapse_addresses(out), key=lambda n: (n.version, n))  # type: ignore[arg-type]

    def describe(self) -> str:
        return str(self.cidr) + (f" except {', '.join(map(str, self.excepts))}" if self.excepts else "")


@dataclass(frozen=True)
class Peer:
    """One entry of `from`/`to`: pods (of the policy's namespace, or of the namespaces the
    namespace selector picks), or an ipBlock."""

    pods: Selector | None = None
    namespaces: Selector | None = None
    ip_block: IPBlock | None = None

    def describe(self) -> str:
        if self.ip_block is not None:
            return f"ipBlock {self.ip_block.describe()}"
        parts = []
        if self.namespaces is not None:
            parts.append(f"namespaceSelector {self.namespaces.describe()}")
        if self.pods is not None:
            parts.append(f"podSelector {self.pods.describe()}")
        return " and ".join(parts)


@dataclass(frozen=True)
class PolicyPort:
    protocol: str = "tcp"  # lower case: tcp, udp, sctp
    port: int | str | None = None  # None = every port of the protocol; a str is a named port
    end_port: int | None = None

    def describe(self) -> str:
        if self.port is None:
            return f"any/{self.protocol}"
        if self.end_port is not None:
            return f"{self.port}-{self.end_port}/{self.protocol}"
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...] = ()  # () = from/to anywhere
    ports: tuple[PolicyPort, ...] = ()  # () = every port and protocol


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: Selector = Selector()
    ingress_isolation: bool = True  # policyTypes holds Ingress
    egress_isolation: bool = False  # policyTypes holds Egress
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def protocols(self) -> set[str]:
        return {p.protocol for r in self.ingress + self.egress for p in r.ports}


@dataclass(frozen=True)
class Namespace:
    """A namespace and its labels; it always has NAME_LABEL=name as well."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return {**dict(self.labels), NAME_LABEL: self.name}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "labels": dict(self.labels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Namespace:
        return cls(d["name"], tuple(sorted(dict(d.get("labels") or {}).items())))


def namespace_labels(name: str, sets: Mapping[str, str], drops: Iterable[str]) -> None:
    """Refuse a change of the implicit label (Kubernetes keeps it equal to the name)."""
    names.check_namespace(name)
    for k, v in sets.items():
        names.check_label(k, v)
        if k == NAME_LABEL and v != name:
            raise Invalid(f"label {NAME_LABEL} of namespace {name} is always {name!r}: it cannot be changed")
    for k in drops:
        if k == NAME_LABEL:
            raise Invalid(f"label {NAME_LABEL} of namespace {name} cannot be removed")


# -- parsing -----------------------------------------------------------------------------------

class _Where:
    def __init__(self, what: str) -> None:
        self.what = what

    def fail(self, path: str, why: str) -> Invalid:
        return Invalid(f"{self.what}: {path}: {why}")


def _obj(w: _Where, v: Any, path: str, known: Iterable[str]) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise w.fail(path, f"{_show(v)} is not an object")
    allowed = set(known)
    for k in v:
        if k not in allowed:
            raise w.fail(f"{path}.{k}" if path else str(k), f"unknown field (known: {', '.join(sorted(allowed))})")
    return v


def _list(w: _Where, v: Any, path: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise w.fail(path, f"{_show(v)} is not a list")
    return v


def _str(w: _Where, v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise w.fail(path, f"{_show(v)} is not a string")
    return v


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_selector(w: _Where, v: Any, path: str) -> Selector:
    d = _obj(w, v, path, ("matchLabels", "matchExpressions"))
    ml = d.get("matchLabels") or {}
    if not isinstance(ml, dict):
        raise w.fail(f"{path}.matchLabels", f"{_show(ml)} is not an object of labels")
    labels = []
    for k, val in ml.items():
        if not isinstance(val, str):
            raise w.fail(f"{path}.matchLabels.{k}", f"{_show(val)} is not a string")
        try:
            labels.append(names.check_label(str(k), val, "label"))
        except Invalid as e:
            raise w.fail(f"{path}.matchLabels.{k}", e.message) from None
    exprs = []
    for i, e in enumerate(_list(w, d.get("matchExpressions"), f"{path}.matchExpressions")):
        p = f"{path}.matchExpressions[{i}]"
        e = _obj(w, e, p, ("key", "operator", "values"))
        key = _str(w, e.get("key"), f"{p}.key")
        if not names.is_label_key(key):
            raise w.fail(f"{p}.key", f"{key!r} is not a label key")
        op = e.get("operator")
        if op not in OPERATORS:
            raise w.fail(f"{p}.operator", f"{_show(op)} is not one of {', '.join(OPERATORS)}")
        values = [_str(w, x, f"{p}.values[{j}]") for j, x in enumerate(_list(w, e.get("values"), f"{p}.values"))]
        if op in ("In", "NotIn") and not values:
            raise w.fail(f"{p}.values", f"operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise w.fail(f"{p}.values", f"operator {op} takes no values")
        for j, x in enumerate(values):
            if not names.is_label_value(x):
                raise w.fail(f"{p}.values[{j}]", f"{x!r} is not a label value")
        exprs.append(Requirement(key, op, tuple(sorted(set(values)))))
    return Selector(tuple(sorted(labels)), tuple(exprs))


def selector_of(v: Any, what: str = "selector") -> Selector:
    """A label selector object ({matchLabels, matchExpressions}) -> Selector."""
    return parse_selector(_Where(what), v, "selector")


def _cidr(w: _Where, v: Any, path: str) -> IPNetwork:
    text = _str(w, v, path)
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise w.fail(path, f"{text!r} is not a CIDR") from None
    if "/" not in text:
        raise w.fail(path, f"{text!r} is not a CIDR (no prefix length)")
    if net.network_address != ipaddress.ip_interface(text).ip:
        raise w.fail(path, f"{text!r} has host bits set (the network is {net})")
    return net


def parse_peer(w: _Where, v: Any, path: str) -> Peer:
    d = _obj(w, v, path, ("podSelector", "namespaceSelector", "ipBlock"))
    pods = parse_selector(w, d["podSelector"], f"{path}.podSelector") if d.get("podSelector") is not None else None
    nss = parse_selector(w, d["namespaceSelector"], f"{path}.namespaceSelector") \
        if d.get("namespaceSelector") is not None else None
    block = None
    if d.get("ipBlock") is not None:
        if pods is not None or nss is not None:
            raise w.fail(path, "may not specify both ipBlock and another peer (podSelector, namespaceSelector)")
        b = _obj(w, d["ipBlock"], f"{path}.ipBlock", ("cidr", "except"))
        if b.get("cidr") is None:
            raise w.fail(f"{path}.ipBlock.cidr", "is required")
        cidr = _cidr(w, b["cidr"], f"{path}.ipBlock.cidr")
        excepts = []
        for i, x in enumerate(_list(w, b.get("except"), f"{path}.ipBlock.except")):
            ex = _cidr(w, x, f"{path}.ipBlock.except[{i}]")
            if ex.version != cidr.version or not ex.subnet_of(cidr) or ex == cidr:  # type: ignore[arg-type]
                raise w.fail(f"{path}.ipBlock.except[{i}]", f"{ex} must be a strict subset of cidr {cidr}")
            excepts.append(ex)
        block = IPBlock(cidr, tuple(excepts))
    if pods is None and nss is None and block is None:
        raise w.fail(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
    return Peer(pods, nss, block)


def parse_port(w: _Where, v: Any, path: str) -> tuple[PolicyPort, dict[str, Any]]:
    d = _obj(w, v, path, ("protocol", "port", "endPort"))
    proto = d.get("protocol", "TCP")
    if proto is None:
        proto = "TCP"
    if proto not in PROTOCOLS:
        raise w.fail(f"{path}.protocol", f"{_show(proto)} is not one of {', '.join(PROTOCOLS)}")
    port = d.get("port")
    if isinstance(port, bool) or (port is not None and not isinstance(port, (int, str))):
        raise w.fail(f"{path}.port", f"{_show(port)} is not a port number or name")
    if isinstance(port, int) and not 1 <= port <= 65535:
        raise w.fail(f"{path}.port", f"{port} is not in 1-65535")
    if isinstance(port, str):
        check_port_name(port, f"{w.what}: {path}.port")
    end = d.get("endPort")
    if end is not None:
        if isinstance(end, bool) or not isinstance(end, int):
            raise w.fail(f"{path}.endPort", f"{_show(end)} is not a port number")
        if port is None:
            raise w.fail(f"{path}.endPort", "may not be specified when port is not specified")
        if isinstance(port, str):
            raise w.fail(f"{path}.endPort", f"may not be specified when port is a named port ({port!r})")
        if not 1 <= end <= 65535:
            raise w.fail(f"{path}.endPort", f"{end} is not in 1-65535")
        if end < port:
            raise w.fail(f"{path}.endPort", f"{end} must be greater than or equal to port ({port})")
    out = {"protocol": proto, **({"port": port} if port is not None else {}),
           **({"endPort": end} if end is not None else {})}
    return PolicyPort(proto.lower(), port, end), out


def parse_rules(w: _Where, v: Any, path: str, peers_key: str) -> tuple[tuple[Rule, ...], list[dict[str, Any]]]:
    rules, shown = [], []
    for i, r in enumerate(_list(w, v, path)):
        p = f"{path}[{i}]"
        r = _obj(w, r, p, (peers_key, "ports"))
        peers = tuple(parse_peer(w, x, f"{p}.{peers_key}[{j}]")
                      for j, x in enumerate(_list(w, r.get(peers_key), f"{p}.{peers_key}")))
        ports, ports_shown = [], []
        for j, x in enumerate(_list(w, r.get("ports"), f"{p}.ports")):
            pp, s = parse_port(w, x, f"{p}.ports[{j}]")
            ports.append(pp)
            ports_shown.append(s)
        rules.append(Rule(peers, tuple(ports)))
        one = dict(r)
        if ports_shown:
            one["ports"] = ports_shown
        shown.append(one)
    return tuple(rules), shown


def parse_policy(doc: Any, default_namespace: str = DEFAULT_NAMESPACE, where: str = "") -> NetworkPolicy:
    """A NetworkPolicy manifest -> NetworkPolicy (Invalid naming the field otherwise). Its
    `manifest` is the document as Kubernetes would store it: the meaningful metadata, and
    the spec with policyTypes and protocols defaulted."""
    w = _Where(where or "policy")
    d = _obj(w, doc, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    if d.get("kind") != KIND:
        raise w.fail("kind", f"{_show(d.get('kind'))} is not {KIND}")
    if d.get("apiVersion") != API_VERSION:
        raise w.fail("apiVersion", f"{_show(d.get('apiVersion'))} is not {API_VERSION}")
    meta = _obj(w, d.get("metadata"), "metadata", _META)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise w.fail("metadata.name", "is required")
    if len(name) > 253 or not SUBDOMAIN_RE.fullmatch(name):
        raise w.fail("metadata.name", f"{name!r} is not a DNS subdomain (lower-case letters, digits, '-', '.')")
    ns = meta.get("namespace") or default_namespace
    try:
        names.check_namespace(ns)
    except Invalid as e:
        raise w.fail("metadata.namespace", e.message) from None
    w.what = f"policy {ns}/{name}"
    for key in ("labels", "annotations"):
        m = meta.get(key)
        if m is not None and (not isinstance(m, dict) or not all(isinstance(v, str) for v in m.values())):
            raise w.fail(f"metadata.{key}", "is not an object of strings")
    for k, v in (meta.get("labels") or {}).items():
        try:
            names.check_label(str(k), v)
        except Invalid as e:
            raise w.fail(f"metadata.labels.{k}", e.message) from None
    spec = _obj(w, d.get("spec"), "spec", ("podSelector", "policyTypes", "ingress", "egress"))
    if "podSelector" not in spec:
        raise w.fail("spec.podSelector", "is required (use {} to select every pod of the namespace)")
    selector = parse_selector(w, spec.get("podSelector"), "spec.podSelector")
    ingress, ingress_shown = parse_rules(w, spec.get("ingress"), "spec.ingress", "from")
    egress, egress_shown = parse_rules(w, spec.get("egress"), "spec.egress", "to")
    types = _list(w, spec.get("policyTypes"), "spec.policyTypes")
    for i, t in enumerate(types):
        if t not in POLICY_TYPES:
            raise w.fail(f"spec.policyTypes[{i}]", f"{_show(t)} is not one of {', '.join(POLICY_TYPES)}")
    if len(set(types)) != len(types):
        raise w.fail("spec.policyTypes", "lists a type twice")
    if not types:  # Kubernetes' default: Ingress, and Egress when there are egress rules
        types = ["Ingress"] + (["Egress"] if egress else [])
    manifest_spec: dict[str, Any] = {"podSelector": spec.get("podSelector") or {}, "policyTypes": list(types)}
    if spec.get("ingress") is not None:
        manifest_spec["ingress"] = ingress_shown
    if spec.get("egress") is not None:
        manifest_spec["egress"] = egress_shown
    metadata: dict[str, Any] = {"name": name, "namespace": ns}
    for key in ("labels", "annotations"):
        if meta.get(key):
            metadata[key] = dict(meta[key])
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": manifest_spec}
    return NetworkPolicy(ns, name, selector, "Ingress" in types, "Egress" in types, ingress, egress, manifest)


def policy_from_manifest(manifest: dict[str, Any]) -> NetworkPolicy:
    """A stored manifest (already checked) back into a NetworkPolicy."""
    return parse_policy(manifest)


def load_documents(text: str, source: str = "-") -> list[Any]:
    """Every document of a YAML or JSON text (`---` separated; a `kind: List` gives its items).
    Invalid (naming the source and the line) when the text does not parse."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise Invalid(f"{source}: not YAML or JSON{at}: {problem}") from None
    out: list[Any] = []
    for i, d in enumerate(docs):
        if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            out.extend(d["items"])
        else:
            out.append(d)
    return out

"""CNI results: build them in the requested version, convert any version to any other (pure).

The canonical in-memory form is the 1.1.0 shape (`interfaces`, `ips` with `interface`
indices, `routes`, `dns`). `to_version` renders it for 0.1.0/0.2.0 (`ip4`/`ip6`),
0.3.x/0.4.0 (`ips[].version`), 1.0.0 (no 1.1 fields) and 1.1.0. `parse_result` reads a
`prevResult` of any supported version back into the canonical form.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from muslin.cni.types import E_CONFIG, E_FIELD, E_VERSION, SUPPORTED_VERSIONS, CniError, version_tuple
from muslin.model.types import IPInterface, Route

_IFACE_11 = ("mtu", "socketPath", "pciID")
_ROUTE_11 = ("mtu", "advmss", "priority", "table", "scope")


def interface(name: str, mac: str = "", mtu: int = 0, sandbox: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if mac:
        out["mac"] = mac
    if mtu:
        out["mtu"] = mtu
    if sandbox:
        out["sandbox"] = sandbox
    return out


def ip_entry(address: IPInterface, gateway: Any = None, iface: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"address": str(address)}
    if gateway is not None and gateway != "":
        out["gateway"] = str(gateway)
    if iface is not None:
        out["interface"] = iface
    return out


def route_entry(r: Route) -> dict[str, Any]:
    return r.to_dict()


def build(interfaces: list[dict[str, Any]], ips: list[dict[str, Any]], routes: list[dict[str, Any]] | None = None,
          dns: dict[str, Any] | None = None) -> dict[str, Any]:
    """A canonical (1.1.0-shaped) result. Empty sections are omitted."""
    out: dict[str, Any] = {"cniVersion": "1.1.0"}
    if interfaces:
        out["interfaces"] = interfaces
    out["ips"] = ips
    if routes:
        out["routes"] = routes
    d = clean_dns(dns or {})
    if d:
        out["dns"] = d
    return out


def clean_dns(dns: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in ("nameservers", "domain", "search", "options"):
        v = dns.get(k)
        if v:
            out[k] = v
    return out


def _family(addr: str) -> int:
    return ipaddress.ip_interface(addr).version


def to_version(res: dict[str, Any], version: str) -> dict[str, Any]:
    """Render a canonical result in `version` (code 1 if the version is not supported)."""
    if version not in SUPPORTED_VERSIONS:
        raise CniError(E_VERSION, f"cannot express a result in cniVersion {version}")
    vt = version_tuple(version)
    if vt < (0, 3, 0):
        return _legacy(res, version)
    out: dict[str, Any] = {"cniVersion": version}
    ifaces = [dict(i) for i in res.get("interfaces", [])]
    routes = [dict(r) for r in res.get("routes", [])]
    if vt < (1, 1, 0):
        for i in ifaces:
            for k in _IFACE_11:
                i.pop(k, None)
        for r in routes:
            for k in _ROUTE_11:
                r.pop(k, None)
    ips = []
    for ip in res.get("ips", []):
        e = dict(ip)
        e.pop("version", None)
        if vt < (1, 0, 0):
            e = {"version": str(_family(e["address"])), **e}
        ips.append(e)
    if ifaces:
        out["interfaces"] = ifaces
    out["ips"] = ips
    if routes:
        out["routes"] = routes
    if res.get("dns"):
        out["dns"] = dict(res["dns"])
    return out


def _legacy(res: dict[str, Any], version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version}
    for fam in (4, 6):
        ip = next((i for i in res.get("ips", []) if _family(i["address"]) == fam), None)
        if ip is None:
            continue
        sect: dict[str, Any] = {"ip": ip["address"]}
        if ip.get("gateway"):
            sect["gateway"] = ip["gateway"]
        rs = [{k: v for k, v in r.items() if k in ("dst", "gw")} for r in res.get("routes", [])
              if ipaddress.ip_network(r["dst"], strict=False).version == fam]
        if rs:
            sect["routes"] = rs
        out[f"ip{fam}"] = sect
    if res.get("dns"):
        out["dns"] = dict(res["dns"])
    return out


def _bad(key: str, value: Any, want: str) -> CniError:
    return CniError(E_FIELD, f"unsupported field prevResult.{key}={json.dumps(value)}: must be {want}")


def _check_addr(key: str, v: Any, kind: str) -> str:
    if not isinstance(v, str):
        raise _bad(key, v, f"a{'n' if kind[0] in 'aeiou' else ''} {kind} string")
    try:
        if kind == "IP address":
            ipaddress.ip_address(v)
        elif kind == "CIDR address":
            ipaddress.ip_interface(v)
            if "/" not in v:
                raise ValueError
        else:
            ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise CniError(E_CONFIG, f"prevResult.{key} {v!r} is not a valid {kind}") from None
    return v


def parse_result(d: Any) -> dict[str, Any]:
    """A result of any supported version (e.g. a prevResult) as a canonical result.

    The result's own cniVersion decides the format; a missing one is read by shape."""
    if not isinstance(d, dict):
        raise CniError(E_FIELD, f"unsupported field prevResult={json.dumps(d)}: must be a result object")
    v = d.get("cniVersion") or ("0.2.0" if ("ip4" in d or "ip6" in d) else "1.0.0")
    if not isinstance(v, str) or v not in SUPPORTED_VERSIONS:
        raise CniError(E_VERSION, f"prevResult has unsupported cniVersion {json.dumps(v)}")
    if version_tuple(v) < (0, 3, 0):
        ips: list[dict[str, Any]] = []
        routes: list[dict[str, Any]] = []
        for fam in ("ip4", "ip6"):
            sect = d.get(fam)
            if not sect:
                continue
            if not isinstance(sect, dict):
                raise _bad(fam, sect, "an object")
            e = {"address": _check_addr(f"{fam}.ip", sect.get("ip"), "CIDR address")}
            if sect.get("gateway"):
                e["gateway"] = _check_addr(f"{fam}.gateway", sect["gateway"], "IP address")
            ips.append(e)
            for i, r in enumerate(sect.get("routes") or []):
                routes.append(_route(f"{fam}.routes[{i}]", r))
        return build([], ips, routes, _dns(d.get("dns")))
    ifaces_in = d.get("interfaces") or []
    if not isinstance(ifaces_in, list):
        raise _bad("interfaces", ifaces_in, "a list")
    ifaces = []
    for i, it in enumerate(ifaces_in):
        if not isinstance(it, dict) or not isinstance(it.get("name"), str):
            raise _bad(f"interfaces[{i}]", it, "an object with a name")
        ifaces.append(dict(it))
    ips = []
    ips_in = d.get("ips") or []
    if not isinstance(ips_in, list):
        raise _bad("ips", ips_in, "a list")
    for i, ip in enumerate(ips_in):
        if not isinstance(ip, dict):
            raise _bad(f"ips[{i}]", ip, "an object")
        e = {k: val for k, val in ip.items() if k != "version"}
        _check_addr(f"ips[{i}].address", ip.get("address"), "CIDR address")
        if ip.get("gateway"):
            _check_addr(f"ips[{i}].gateway", ip["gateway"], "IP address")
        if "interface" in ip and ip["interface"] is not None:
            idx = ip["interface"]
            if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(ifaces):
                raise CniError(E_CONFIG, f"prevResult.ips[{i}].interface {idx!r} is not an index into interfaces")
        ips.append(e)
    routes_in = d.get("routes") or []
    if not isinstance(routes_in, list):
        raise _bad("routes", routes_in, "a list")
    routes = [_route(f"routes[{i}]", r) for i, r in enumerate(routes_in)]
    return build(ifaces, ips, routes, _dns(d.get("dns")))


def _route(where: str, r: Any) -> dict[str, Any]:
    if not isinstance(r, dict):
        raise _bad(where, r, "an object {dst, gw}")
    _check_addr(f"{where}.dst", r.get("dst"), "CIDR")
    if r.get("gw"):
        _check_addr(f"{where}.gw", r["gw"], "IP address")
    return dict(r)


def _dns(d: Any) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise _bad("dns", d, "an object")
    return clean_dns(d)


def merge(prev: dict[str, Any] | None, mine: dict[str, Any]) -> dict[str, Any]:
    """Amend a canonical prevResult with this plugin's result: interfaces appended (and
    ip interface indices shifted), ips/routes appended, dns kept unless it is empty."""
    if not prev:
        return mine
    n = len(prev.get("interfaces", []))
    ips = list(prev.get("ips", []))
    for ip in mine.get("ips", []):
        e = dict(ip)
        if "interface" in e:
            e["interface"] = e["interface"] + n
        ips.append(e)
    routes = list(prev.get("routes", [])) + [r for r in mine.get("routes", []) if r not in prev.get("routes", [])]
    return build(list(prev.get("interfaces", [])) + list(mine.get("interfaces", [])), ips, routes,
                 prev.get("dns") or mine.get("dns"))


def container_addresses(res: dict[str, Any], ifname: str) -> list[IPInterface]:
    """The addresses a canonical result assigns to the container interface `ifname`
    (entries without an interface index count too)."""
    ifaces = res.get("interfaces", [])
    out: list[IPInterface] = []
    for ip in res.get("ips", []):
        idx = ip.get("interface")
        if idx is not None and (idx >= len(ifaces) or ifaces[idx].get("name") != ifname
                                or not ifaces[idx].get("sandbox")):
            continue
        out.append(ipaddress.ip_interface(ip["address"]))
    return out


def error(code: int, msg: str, details: str = "", version: str = "1.1.0") -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version if version in SUPPORTED_VERSIONS else "1.1.0", "code": code, "msg": msg}
    if details:
        out["details"] = details
    return out

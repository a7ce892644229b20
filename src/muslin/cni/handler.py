"""The CNI dispatcher: (environment, stdin) in, (stdout text, exit code) out.

`handle` is the main plugin `muslin-cni` (a drop-in for the reference `bridge`);
`handle_ipam` is the IPAM plugin `muslin-ipam` (a drop-in for `host-local`, on Muslin's
store). Verbs: ADD, DEL, CHECK, VERSION, GC, STATUS (spec 1.1). Errors are the CNI error
JSON on stdout with exit code 1; nothing ever raises out of here and no traceback is
printed. The work itself is done by `muslin.control.service.Muslin`; this module never
changes the namespace of the process it runs in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from muslin import events
from muslin.cni import result as R
from muslin.cni.types import (
    CURRENT_VERSION, E_CONFIG, E_ENV, E_INTERNAL, E_STATUS, E_TRY_AGAIN, SUPPORTED_VERSIONS, CniError,
    CniRequest, check_requested_prefixes, error_code, parse_request,
)
from muslin.model.errors import Exhausted, MuslinError, NotFound
from muslin.model.types import Endpoint, IPInterface, IPRange, Network, RangeSet

DELEGATE_TIMEOUT = 120.0


# --------------------------------------------------------------------------- the guard


def _request_version(stdin: bytes) -> str:
    try:
        v = json.loads(stdin.decode("utf-8")).get("cniVersion")
        return v if v in SUPPORTED_VERSIONS else CURRENT_VERSION
    except Exception:  # noqa: BLE001
        return CURRENT_VERSION


MSG_MAX, WORD_MAX = 600, 100


def one_line(text: str) -> str:
    """A message as one readable line: whitespace collapsed, a huge value (a 300 kB config
    value quoted back) shortened in the middle, the whole capped."""
    words = [w if len(w) <= WORD_MAX else f"{w[:WORD_MAX - 30]}...({len(w)} chars)...{w[-10:]}"
             for w in text.split()]
    s = " ".join(words)
    return s if len(s) <= MSG_MAX else s[:MSG_MAX - 3] + "..."


def _guarded(fn: Callable[[], dict[str, Any] | None], stdin: bytes) -> tuple[str, int]:
    try:
        out = fn()
        return (json.dumps(out) if out is not None else ""), 0
    except MuslinError as e:
        events.emit("error", source="cni", kind=e.kind)
        msg = one_line(str(e.message)) or type(e).__name__
        return json.dumps(R.error(error_code(e), msg, one_line(str(e.details)), _request_version(stdin))), 1
    except BaseException as e:  # noqa: BLE001 - last resort: one line, never a traceback
        events.emit("error", source="cni", kind="internal")
        text = one_line(str(e))[:300] or type(e).__name__
        return json.dumps(R.error(E_INTERNAL, f"internal error: {text}", type(e).__name__,
                                  _request_version(stdin))), 1


def handle(env: dict[str, str], stdin: bytes) -> tuple[str, int]:
    """muslin-cni: the main plugin."""
    return _guarded(lambda: _main(env, stdin), stdin)


def handle_ipam(env: dict[str, str], stdin: bytes) -> tuple[str, int]:
    """muslin-ipam: host-local semantics on Muslin's store."""
    return _guarded(lambda: _ipam_main(env, stdin), stdin)


def version_answer(version: str) -> dict[str, Any]:
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


# --------------------------------------------------------------------------- helpers


def state_dir(req: CniRequest, env: dict[str, str]) -> str:
    return req.data_dir or env.get("MUSLIN_STATE_DIR") or os.environ.get("MUSLIN_STATE_DIR") or "/var/lib/muslin"


# muslind sets this to {} (cni/server.py): one Muslin per store kept open across requests
# (saves the store open/close of every call); None in a one-shot plugin process.
KEEP_OPEN: dict[tuple[str, str], Any] | None = None


def _open(req: CniRequest, env: dict[str, str]):
    from muslin.control.service import open_muslin

    d = state_dir(req, env)
    url = "" if req.data_dir else (env.get("MUSLIN_STORE") or os.environ.get("MUSLIN_STORE") or "")
    if KEEP_OPEN is not None:
        kept = KEEP_OPEN.get((url, d))
        if kept is not None and kept.store_is_current():
            return kept
        if kept is not None:  # the db file was replaced: drop the stale connection
            KEEP_OPEN.pop((url, d), None)
            kept.close()
    if not url and not d.endswith(".db") and os.path.exists(d) and not os.path.isdir(d):
        where = "dataDir" if req.data_dir else "MUSLIN_STATE_DIR"
        raise CniError(E_CONFIG, f"{where} {d} is not a directory")
    try:
        m = open_muslin(url or d, d)
    except MuslinError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CniError(E_TRY_AGAIN, f"cannot open Muslin's store {url or d}: {e}") from None
    if KEEP_OPEN is not None:
        KEEP_OPEN[(url, d)] = m
    return m


NS_GET_NSTYPE, CLONE_NEWNET = 0xB703, 0x40000000


def _check_netns(netns: str) -> None:
    """CNI_NETNS of an ADD/CHECK, before any work: a network namespace (not a mount
    namespace, a directory or /dev/null: code 4), and not the plugin's own (skel's rule,
    code 8). A missing one is code 3."""
    import fcntl

    try:
        fd = os.open(netns, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # NONBLOCK: a FIFO must not block
    except FileNotFoundError:
        raise CniError(3, f"network namespace {netns} does not exist") from None
    except OSError as e:
        raise CniError(E_ENV, f"CNI_NETNS {netns}: {e.strerror}") from None
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            kind = 0
        if kind != CLONE_NEWNET:
            raise CniError(E_ENV, f"CNI_NETNS {netns} is not a network namespace")
        a, b = os.fstat(fd), os.stat("/proc/self/ns/net")
    finally:
        os.close(fd)
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        raise CniError(8, f"CNI_NETNS {netns} is the plugin's own network namespace, not a container's")


def _open_for(req: CniRequest, env: dict[str, str]):
    """Open Muslin; for STATUS a store that cannot be opened means 'cannot serve ADD' (50)."""
    try:
        return _open(req, env)
    except MuslinError as e:
        if req.command == "STATUS":
            raise CniError(E_STATUS, f"cannot serve ADD: {e.message}") from None
        raise


def find_plugin(name: str, path: tuple[str, ...]) -> str:
    if not name or "/" in name:
        raise CniError(E_CONFIG, f"ipam.type {name!r} is not a plugin name")
    if not path:
        raise CniError(E_ENV, f"CNI_PATH is not set: it is needed to find the IPAM plugin {name!r}")
    for d in path:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    raise CniError(E_CONFIG, f"IPAM plugin {name!r} not found in CNI_PATH {':'.join(path) or '(empty)'}")


def delegate(req: CniRequest, env: dict[str, str], stdin: bytes, command: str) -> dict[str, Any] | None:
    """Run the IPAM plugin `req.ipam_type` with the same env (verb `command`) and the full
    stdin; its error becomes ours. Returns its parsed result (ADD) or None."""
    exe = find_plugin(req.ipam_type, req.env.path)
    penv = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "MUSLIN_"))}
    penv.update(env)
    penv["CNI_COMMAND"] = command
    try:
        p = subprocess.run([exe], input=stdin, env=penv, capture_output=True, timeout=DELEGATE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CniError(E_TRY_AGAIN, f"IPAM plugin {req.ipam_type} {command} did not finish in "
                                    f"{DELEGATE_TIMEOUT:.0f}s") from None
    except OSError as e:
        raise CniError(E_CONFIG, f"cannot run IPAM plugin {exe}: {e.strerror}") from None
    if p.stderr:
        sys.stderr.write(p.stderr.decode("utf-8", "replace"))
    out = p.stdout.decode("utf-8", "replace").strip()
    if p.returncode != 0:
        try:
            err = json.loads(out)
            code, msg, details = int(err.get("code", E_INTERNAL)), str(err.get("msg", "")), str(err.get("details", ""))
        except (ValueError, AttributeError, TypeError):
            code, msg, details = E_INTERNAL, (out or p.stderr.decode("utf-8", "replace")).strip(), ""
        msg = " ".join(msg.split()) or f"exit status {p.returncode}"
        raise CniError(code, f"IPAM plugin {req.ipam_type} {command} failed: {msg}", details)
    if command != "ADD":
        return None
    try:
        return R.parse_result(json.loads(out))
    except ValueError:
        raise CniError(E_CONFIG, f"IPAM plugin {req.ipam_type} printed no valid result: {out[:200]!r}") from None


def _nets_from_addresses(net: Network, res: dict[str, Any]) -> Network:
    """With a foreign IPAM whose config Muslin cannot read, learn the subnets from its result."""
    if net.range_sets:
        return net
    sets: list[RangeSet] = []
    for ip in res.get("ips", []):
        a = ipaddress.ip_interface(ip["address"])
        gw = ipaddress.ip_address(ip["gateway"]) if ip.get("gateway") else None
        if a.network.max_prefixlen - a.network.prefixlen < 2:
            continue
        if any(a.network == r.subnet for rs in sets for r in rs):
            continue
        sets.append((IPRange(a.network, gateway=gw),))
    return net.evolve(range_sets=tuple(sets))


def endpoint_result(ep: Endpoint, dns: dict[str, Any]) -> dict[str, Any]:
    """The canonical result of an attachment: its interfaces (for a bridge: bridge, host
    veth, container interface), its addresses on the last one, its routes."""
    ifaces = [R.interface(i.name, i.mac, i.mtu, i.sandbox) for i in ep.interfaces] or \
        [R.interface(ep.ifname, ep.mac, ep.mtu, ep.netns)]
    idx = len(ifaces) - 1
    ips = []
    for a in ep.addresses:
        gw = next((g for g in ep.gateways if g.version == a.version), None)
        ips.append(R.ip_entry(a, gw, idx))
    routes = [r.to_dict() for r in ep.routes]
    return R.build(ifaces, ips, routes, dns)


def _muslin_dns(m, network: str, req: CniRequest, env: dict[str, str]) -> dict[str, Any]:
    """muslind's DNS for this network (nameserver = its gateway, search = its name), when a
    muslind serves DNS for this state dir."""
    from muslin.control.dns_feed import serving
    from muslin.dns.records import client_config

    net = m.find_network(network)
    if net is None or not serving(str(m.state_dir)):
        return {}
    servers, search = client_config([net])
    return {"nameservers": servers, "search": search} if servers else {}


def _network_of(req: CniRequest, learned: dict[str, Any] | None) -> Network:
    """The network this config implies (or, with the `network` key, the one it joins)."""
    if req.join:
        return Network(name=req.join)
    assert req.network is not None
    return _nets_from_addresses(req.network, learned) if learned is not None else req.network


# --------------------------------------------------------------------------- muslin-cni


def _main(env: dict[str, str], stdin: bytes) -> dict[str, Any] | None:
    req = parse_request(env, stdin)
    if req.command == "VERSION":
        return version_answer(req.version)
    resolv = _resolv_dns(req)  # before any work: a missing file changes nothing
    if resolv and not req.dns:
        req = dataclasses.replace(req, dns=resolv)
    if req.command in ("ADD", "CHECK"):
        _check_netns(req.env.netns)
    m = _open_for(req, env)
    try:
        return {"ADD": _add, "DEL": _del, "CHECK": _check, "GC": _gc, "STATUS": _status}[req.command](
            m, req, env, stdin)
    finally:
        if KEEP_OPEN is None:
            m.close()


def _add(m, req: CniRequest, env: dict[str, str], stdin: bytes) -> dict[str, Any]:
    from muslin.model.types import AttachRequest

    prev = R.parse_result(req.prev_result) if req.prev_result else None
    learned = delegate(req, env, stdin, "ADD") if req.delegates_ipam else None
    try:
        addresses: tuple[IPInterface, ...] = ()
        if learned is not None:
            addresses = tuple(ipaddress.ip_interface(ip["address"]) for ip in learned.get("ips", []))
        if req.join:  # the subnets are known now: a requested 10.1.0.5/8 on a /24 is refused
            joined = m.find_network(req.join)
            if joined is not None:
                check_requested_prefixes(req.requested, joined.range_sets)
        try:
            ep = m.ensure_and_attach(_network_of(req, learned), AttachRequest(
                network=req.network_name, endpoint_id=req.endpoint_id, container_id=req.env.container_id,
                ifname=req.env.ifname, netns=req.env.netns, ips=() if learned is not None else req.ips,
                mac=req.mac, ports=req.ports, aliases=req.aliases, addresses=addresses, mtu=req.mtu,
                owner=req.owner, name=req.pod_name, labels=req.labels, namespace=req.namespace, exposed=req.exposed,
                bandwidth=req.bandwidth), join=bool(req.join))
        except NotFound as e:
            if req.join and m.find_network(req.join) is None:
                raise CniError(E_CONFIG, f"network {req.join!r} (config key network) does not exist in Muslin") \
                    from None
            raise e
        try:
            dns = req.dns or (learned or {}).get("dns") or _muslin_dns(m, ep.network, req, env)
            res = endpoint_result(ep, dns)
            if learned is not None and learned.get("routes") and not ep.routes:
                res["routes"] = learned["routes"]
            res = R.to_version(R.merge(prev, res), req.version)
        except BaseException:
            m.detach(ep.network, req.endpoint_id, owner=req.owner, netns=req.env.netns, ifname=req.env.ifname)
            raise
    except BaseException:
        if learned is not None:
            try:
                delegate(req, env, stdin, "DEL")
            except MuslinError as e:
                print(f"muslin-cni: IPAM DEL after a failed ADD: {e}", file=sys.stderr)
        raise
    return res


def _del(m, req: CniRequest, env: dict[str, str], stdin: bytes) -> None:
    first: MuslinError | None = None
    try:
        m.detach(req.network_name, req.endpoint_id, owner=req.owner, netns=req.env.netns, ifname=req.env.ifname)
    except MuslinError as e:
        first = e
    if req.delegates_ipam:
        delegate(req, env, stdin, "DEL")
    if first is not None:
        raise first
    return None


def _check(m, req: CniRequest, env: dict[str, str], stdin: bytes) -> None:
    try:
        ep = m.check(req.network_name, req.endpoint_id, netns=req.env.netns)
    except NotFound as e:
        raise CniError(E_CONFIG, f"CHECK failed: {e.message}") from None
    if req.prev_result:
        prev = R.parse_result(req.prev_result)
        want = set(R.container_addresses(prev, req.env.ifname))
        have = set(ep.addresses)
        if want - have:
            raise CniError(E_CONFIG, f"CHECK failed: {req.env.ifname} lacks "
                                     f"{', '.join(sorted(str(a) for a in want - have))} listed in prevResult")
        for it in prev.get("interfaces", []):
            if it.get("name") == req.env.ifname and it.get("sandbox") and it.get("mac") and ep.mac \
                    and it["mac"].lower() != ep.mac.lower():
                raise CniError(E_CONFIG, f"CHECK failed: {req.env.ifname} has MAC {ep.mac}, prevResult says "
                                         f"{it['mac']}")
    if req.delegates_ipam:
        delegate(req, env, stdin, "CHECK")
    return None


def _gc(m, req: CniRequest, env: dict[str, str], stdin: bytes) -> None:
    valid = {f"{cid}/{ifn}" for cid, ifn in (req.valid_attachments or ())}
    first: MuslinError | None = None
    try:
        if m.find_network(req.network_name) is not None:
            m.gc(req.network_name, valid, owner_prefix="cni/")  # only CNI attachments are ours to collect
    except MuslinError as e:
        first = e
    if req.delegates_ipam:
        delegate(req, env, stdin, "GC")
    else:
        try:
            _ipam_gc(m.ipam, req)
        except MuslinError as e:
            first = first or e
    if first is not None:
        raise first
    return None


def _status(m, req: CniRequest, env: dict[str, str], stdin: bytes) -> None:
    if req.delegates_ipam:
        try:
            delegate(req, env, stdin, "STATUS")
        except CniError as e:
            raise CniError(E_STATUS, e.message, e.details) from None
        return None
    sets = req.range_sets
    if req.join:
        net = m.find_network(req.join)
        if net is None:
            raise CniError(E_STATUS, f"network {req.join!r} (config key network) does not exist in Muslin")
        sets = net.range_sets
    _pool_status(m.ipam, sets)
    return None


# --------------------------------------------------------------------------- IPAM pieces


def _pool_status(ipam, sets: tuple[RangeSet, ...]) -> None:
    try:
        ipam.check_pools(sets)
    except MuslinError as e:
        raise CniError(E_STATUS, e.message if isinstance(e, Exhausted) else f"cannot serve ADD: {e.message}") from None


def _ipam_gc(ipam, req: CniRequest) -> list[str]:
    """Free CNI allocations in this config's subnets whose attachment is not valid any more
    (other front-ends' allocations on a shared subnet are never touched)."""
    valid = {f"cni/{cid}/{ifn}" for cid, ifn in (req.valid_attachments or ())}
    subnets = list(dict.fromkeys(r.subnet for rs in req.range_sets for r in rs))
    return ipam.gc(subnets, valid, owner_prefix="cni/") if subnets else []


RESOLV_CONF_MAX = 65536


def _resolv_dns(req: CniRequest) -> dict[str, Any]:
    """The DNS settings of ipam.resolvConf for an ADD whose IPAM is Muslin's (a delegated
    IPAM plugin reads its own); {} otherwise."""
    if req.command != "ADD" or req.delegates_ipam:
        return {}
    return _resolv_conf(str(req.ipam.get("resolvConf") or ""))


def _resolv_conf(path: str) -> dict[str, Any]:
    if not path:
        return {}
    try:
        p = Path(path)
        if not p.is_file():  # not a FIFO, device or directory: reading one could block or never end
            raise CniError(E_CONFIG, f"ipam.resolvConf {path} is not a file that exists")
        with p.open("rb") as f:
            text = f.read(RESOLV_CONF_MAX).decode("utf-8", "replace")
    except OSError as e:
        raise CniError(E_CONFIG, f"ipam.resolvConf {path}: {e.strerror}") from None
    dns: dict[str, Any] = {}
    for line in text.splitlines():
        f = line.split()
        if not f or f[0].startswith(("#", ";")):
            continue
        if f[0] == "nameserver" and len(f) > 1:
            dns.setdefault("nameservers", []).append(f[1])
        elif f[0] == "domain" and len(f) > 1:
            dns["domain"] = f[1]
        elif f[0] == "search":
            dns["search"] = f[1:]
        elif f[0] == "options":
            dns.setdefault("options", []).extend(f[1:])
    return dns


def _ipam_main(env: dict[str, str], stdin: bytes) -> dict[str, Any] | None:
    req = parse_request(env, stdin, ipam_plugin=True)
    if req.command == "VERSION":
        return version_answer(req.version)
    dns = _resolv_dns(req)  # before any allocation: a missing file changes nothing
    m = _open_for(req, env)
    try:
        ipam = m.ipam
        cmd = req.command
        if cmd == "ADD":
            return _ipam_add(ipam, req, dns)
        if cmd == "DEL":
            ipam.release(req.owner)
            return None
        if cmd == "CHECK":
            subnets = {r.subnet for rs in req.range_sets for r in rs}
            if any(s in subnets for s, _ in ipam.allocated(req.owner)):
                return None
            raise CniError(E_CONFIG, f"CHECK failed: no address is allocated to {req.env.container_id} "
                                     f"{req.env.ifname} in {', '.join(str(s) for s in subnets)}")
        if cmd == "GC":
            _ipam_gc(ipam, req)
            return None
        _pool_status(ipam, req.range_sets)  # STATUS
        return None
    finally:
        if KEEP_OPEN is None:
            m.close()


def _ipam_add(ipam, req: CniRequest, dns: dict[str, Any]) -> dict[str, Any]:
    from muslin.ipam.ranges import describe_range_set

    held = {s for s, _ in ipam.allocated(req.owner)}
    for rs in req.range_sets:
        if held & {r.subnet for r in rs}:
            raise CniError(E_CONFIG, f"container {req.env.container_id} {req.env.ifname} already has an "
                                     f"address in {describe_range_set(rs)} (duplicate allocation)")
    if len(req.range_sets) > 1 and req.version in ("0.1.0", "0.2.0"):
        fams = [rs[0].subnet.version for rs in req.range_sets]
        if len(fams) != len(set(fams)):
            raise CniError(E_CONFIG, f"cniVersion {req.version} allows one address per family; use 0.3.0 or later")
    addrs = ipam.allocate(req.range_sets, req.owner, req.env.container_id, req.env.ifname, list(req.ips))
    ips = [R.ip_entry(a, gw) for a, gw in addrs]
    routes = [r.to_dict() for r in req.ipam_routes]
    return R.to_version(R.build([], ips, routes, dns), req.version)

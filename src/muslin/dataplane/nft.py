"""Apply Muslin's firewall to the kernel: the one owned table `inet muslin`.

`sync(state)` compiles the desired state (pure, may raise Invalid/Conflict before anything
is touched), takes a host-wide flock, observes the table with ONE `nft -j list table` call
and applies ONE `nft -f -` batch: the full table when it is missing or its skeleton is not
the one this code writes (changed code, or a rule edited by hand), else only the element
differences; the empty state deletes the table. Another table is never read or written.

The table carries an owner mark (the state dir it belongs to): a sync for another state
dir is refused with Conflict before anything is written, so two state dirs in one host
namespace can never rewrite or delete each other's firewall. The sync holds a lock of the
whole network namespace (dataplane/nslock.py), whichever state dir the caller uses.

Everything runs in the caller's current network namespace.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from typing import Any

from muslin.dataplane import guard_nft, libnft
from muslin.dataplane.nslock import netns_lock
from muslin.firewall.compiler import (CHAINS, DECLARED_MAPS, DECLARED_SETS, DIGEST, FAMILY, OWNER_CHAIN, RULE_COMMENT,
                                      SET_NAMES, SKELETON, TABLE, Ruleset, compile, owner_path, same_owner,
                                      sysctls_for)
from muslin.firewall.services import PREFIX as SERVICE_PREFIX
from muslin.firewall.render import render_delete, render_delta, render_full
from muslin.firewall.state import FirewallState
from muslin.model.errors import Conflict, Invalid, Unavailable, Unsupported

TIMEOUT = 30.0
_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "ipv6-icmp"}
_PRIO = {"filter": 0, "dstnat": -100, "srcnat": 100, "mangle": -150, "raw": -300, "security": 50}


def _nft_binary() -> str:
    found = shutil.which("nft")
    if found:
        return found
    for p in ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"):
        if os.access(p, os.X_OK):
            return p
    raise Unsupported("nftables: nft binary not found")


def _error_line(stderr: str) -> str:
    for line in stderr.splitlines():
        if "Error:" in line:
            return line.split("Error:", 1)[1].strip()
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[0] if lines else "nft failed without a message"


def _error(stderr: str, doing: str) -> Exception:
    msg = _error_line(stderr)
    text = f"nftables: {doing}: {msg}"
    if "Operation not permitted" in msg or "Permission denied" in msg or "Device or resource busy" in msg:
        return Unavailable(text, stderr)
    if "Operation not supported" in msg or "Protocol not supported" in msg:
        return Unsupported(text, stderr)
    return Invalid(text, stderr)


def use_library() -> bool:
    """libnftables in this process (the default where it loads), else the nft binary
    (MUSLIN_NFT=binary forces the binary: the benchmarks compare both)."""
    return os.environ.get("MUSLIN_NFT") != "binary" and libnft.available()


def _run(args: list[str], input: str | None = None, doing: str = "") -> subprocess.CompletedProcess:
    if use_library():
        json_output = args[:1] == ["-j"]
        text = input if args[-2:] == ["-f", "-"] else " ".join(args[1:] if json_output else args)
        try:
            rc, out, err = libnft.run(text or "", json_output)
        except OSError as e:
            raise Unavailable(f"nftables: {doing or ' '.join(args)}: {e}") from None
        return subprocess.CompletedProcess(args, rc, out, err)
    cmd = [_nft_binary(), *args]
    try:
        return subprocess.run(cmd, input=input, text=True, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"nftables: {doing or ' '.join(args)}: nft did not answer within {TIMEOUT:.0f}s") from None
    except OSError as e:
        raise Unavailable(f"nftables: cannot run nft: {e.strerror or e}") from None


def apply(script: str, doing: str = "apply") -> None:
    """Apply an nft script as ONE atomic batch (`nft -f -`)."""
    if not script:
        return
    res = _run(["-f", "-"], input=script, doing=doing)
    if res.returncode != 0:
        raise _error(res.stderr, doing)


# ---- observe --------------------------------------------------------------------------

def _fmt(value: Any, typ: str) -> str:
    """One element field (from nft -j) in the canonical text compile() writes."""
    if isinstance(value, dict):
        if "prefix" in value:
            p = value["prefix"]
            full = 32 if ":" not in str(p["addr"]) else 128
            return str(p["addr"]) if int(p["len"]) == full else f"{p['addr']}/{p['len']}"
        if "range" in value:
            a, b = value["range"]
            return f"{_fmt(a, typ)}-{_fmt(b, typ)}"
        if "elem" in value:
            return _fmt(value["elem"].get("val"), typ)
        raise ValueError(f"unexpected element {value!r}")
    if typ == "ifname":
        return f'"{value}"'
    if typ == "inet_proto" and isinstance(value, int):
        return _PROTO_NAMES.get(value, str(value))
    return str(value)


def _fmt_key(value: Any, types: list[str]) -> str:
    if isinstance(value, dict) and "elem" in value:
        value = value["elem"].get("val")
    if isinstance(value, dict) and "concat" in value:
        parts = value["concat"]
        return " . ".join(_fmt(v, types[i] if i < len(types) else "") for i, v in enumerate(parts))
    return _fmt(value, types[0] if types else "")


def _decl(obj: dict) -> str:
    typ = obj.get("type", "")
    types = typ if isinstance(typ, list) else [typ]
    d = "type " + " . ".join(types)
    if "map" in obj:
        m = obj["map"]
        d += " : " + (" . ".join(m) if isinstance(m, list) else m)
    flags = obj.get("flags") or []
    if isinstance(flags, str):
        flags = [flags]
    if flags:
        d += "; flags " + ", ".join(flags)
    if any(isinstance(st, dict) and "counter" in st for st in obj.get("stmt") or []):
        d += "; counter"  # a counter per element (the policy's drop sets)
    return d


def _chain_header(obj: dict) -> str:
    if "hook" not in obj:
        return ""
    return f"type {obj.get('type')} hook {obj['hook']} priority {obj.get('prio')}; policy {obj.get('policy', 'accept')};"


def _expected_header(head: str) -> str:
    if not head:
        return ""
    m = re.match(r"type (\w+) hook (\w+) priority (-?\w+); policy (\w+);$", head)
    assert m, head
    prio = m.group(3)
    prio = _PRIO[prio] if prio in _PRIO else int(prio)
    return f"type {m.group(1)} hook {m.group(2)} priority {prio}; policy {m.group(4)};"


def parse(listing: dict) -> Ruleset:
    """A Ruleset from the JSON of `nft -j list table inet muslin` (pure).

    The skeleton counts as ours (`digest == DIGEST`) only when every set/map declaration,
    every chain header and every rule (by count and by its digest comment) is what this
    code writes; otherwise the digest is "drift" and sync() replaces the whole table."""
    elements: dict[str, frozenset[str]] = {}
    decls: dict[str, str] = {}
    chains: dict[str, str] = {}
    rules: dict[str, list[str]] = {}
    owner = ""
    for item in listing.get("nftables", []):
        (kind, obj), = item.items() if len(item) == 1 else (("", {}),)
        if not isinstance(obj, dict) or obj.get("family", FAMILY) != FAMILY or obj.get("table", TABLE) != TABLE:
            continue
        if str(obj.get("name", "") if kind != "rule" else obj.get("chain", "")).startswith(SERVICE_PREFIX):
            continue  # a service's own chains and sets (firewall/services.py): not the skeleton's
        if kind in ("set", "map"):
            name = obj["name"]
            decls[name] = _decl(obj)
            typ = obj.get("type", "")
            types = typ if isinstance(typ, list) else [typ]
            m = obj.get("map", "")
            vtypes = (m if isinstance(m, list) else str(m).split(" . ")) if m else []
            out = set()
            for e in obj.get("elem", []) or []:
                if kind == "map" and isinstance(e, list):
                    out.add(f"{_fmt_key(e[0], types)} : {_fmt_key(e[1], vtypes)}")
                else:
                    out.add(_fmt_key(e, types))
            elements[name] = frozenset(out)
        elif kind == "chain" and obj.get("name") != OWNER_CHAIN:
            chains[obj["name"]] = _chain_header(obj)
            rules.setdefault(obj["name"], [])
        elif kind == "rule" and obj.get("chain") == OWNER_CHAIN:
            owner = owner or str(obj.get("comment", ""))
        elif kind == "rule":
            rules.setdefault(obj["chain"], []).append(obj.get("comment", ""))
    expected_decls = dict(DECLARED_SETS + DECLARED_MAPS)
    expected_chains = {name: _expected_header(head) for name, head, _ in CHAINS}
    ok = decls == expected_decls and chains == expected_chains and all(
        rules.get(name, []) == [RULE_COMMENT] * len(rs) for name, _, rs in CHAINS)
    known = {k: v for k, v in elements.items() if k in SET_NAMES}
    return Ruleset(skeleton=SKELETON if ok else "", elements=known, digest=DIGEST if ok else "drift", owner=owner)


def observe() -> Ruleset | None:
    """The table as the kernel has it (one nft call); None when it does not exist."""
    res = _run(["-j", "list", "table", FAMILY, TABLE], doing="list table")
    if res.returncode != 0:
        if "No such file or directory" in res.stderr:
            return None
        raise _error(res.stderr, f"list table {FAMILY} {TABLE}")
    try:
        return parse(json.loads(res.stdout))
    except (ValueError, KeyError, TypeError) as e:
        raise Unavailable(f"nftables: cannot read `nft -j list table {FAMILY} {TABLE}`: {e}") from None


def delete_table() -> None:
    """Remove the table; succeeds when it is already gone."""
    apply(render_delete(), doing=f"delete table {FAMILY} {TABLE}")


# ---- sync ----------------------------------------------------------------------------

def owner() -> str | None:
    """The owner mark of the table (None: no table; "" a table without a mark)."""
    observed = observe()
    return None if observed is None else observed.owner


def apply_sysctls(values: dict[str, str]) -> dict[str, str]:
    """Set the sysctls the firewall state needs; a bridge that does not exist (yet) is skipped.
    Returns the previous value of each one it changed (for an undo)."""
    changed: dict[str, str] = {}
    for path, value in values.items():
        try:
            with open(path) as f:
                old = f.read().strip()
            if old == value:
                continue
            with open(path, "w") as f:
                f.write(value)
            changed[path] = old
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno == errno.ENOENT:
                continue
            raise Unavailable(f"sysctl: cannot set {path}={value}: {e.strerror or e}") from None
    return changed


def refuse_other_owner(observed: Ruleset | None, mine: str) -> None:
    if observed is not None and observed.owner and mine and not same_owner(observed.owner, mine):
        raise Conflict(f"this host namespace is managed by Muslin with state dir {owner_path(observed.owner)} "
                       f"(its nftables table inet {TABLE}); use that state dir (--state-dir, MUSLIN_STATE_DIR "
                       "or the CNI config's dataDir): one state dir per host namespace")


def sync(state: FirewallState, owner: str = "", changed: dict[str, str] | None = None) -> str:
    """Make the kernel's table match `state`, for the state dir marked `owner`. Returns what
    was done: "full", "delta", "noop" or "deleted"; `changed` receives the previous value of
    each sysctl it changed. Conflict, with nothing written, when the table belongs to another
    state dir."""
    desired = compile(state, owner)
    with netns_lock("nft"):
        observed = observe()
        refuse_other_owner(observed, owner)
        # the anti-spoofing table (bridge muslin) changes in the same batch
        guards = guard_nft.sync_script(state.guards, delete=state.empty)
        if state.empty:
            if observed is None:
                apply(guards, doing=f"delete table {guard_nft.FAMILY} {TABLE}")
                return "noop"
            apply(render_delete() + guards, doing=f"delete table {FAMILY} {TABLE}")
            return "deleted"
        if observed is None or not observed.same_skeleton(desired) or observed.owner != desired.owner:
            apply(render_full(desired) + guards, doing=f"replace table {FAMILY} {TABLE}")
            done = "full"
        else:
            delta = render_delta(observed, desired)
            apply(delta + guards, doing=f"update table {FAMILY} {TABLE}")
            done = "delta" if delta or guards else "noop"
        prev = apply_sysctls(sysctls_for(state))
        if changed is not None:
            changed.update(prev)
        return done


__all__ = ["apply", "apply_sysctls", "delete_table", "observe", "owner", "parse", "sync"]

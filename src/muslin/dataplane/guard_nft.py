"""The anti-spoofing table `bridge muslin` in the kernel (firewall/antispoof.py is its pure
model).

`sync_script(guards)` observes the table (one `nft -j list table bridge muslin`) and returns
the script that makes it match, the whole table when it is missing or its skeleton differs,
else element deltas; `dataplane/nft.py` puts it in the same batch as the `inet muslin`
table's changes. `change(add, remove)` adds or removes some endpoints' elements without
reading the table (an attach or detach: flat cost at any number of endpoints); NotFound when
the table is not there (the caller then syncs all of it).

Runs in the caller's network namespace; the caller holds the namespace's nft lock.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from muslin.firewall import antispoof
from muslin.firewall.antispoof import FAMILY, SET_NAMES, SETS, SHOWN, TABLE, Guard, GuardRuleset
from muslin.model.errors import NotFound, Unavailable


def _nft():  # type: ignore[no-untyped-def]
    from muslin.dataplane import nft

    return nft


def _field(v: Any, typ: str) -> str:
    if isinstance(v, dict) and "elem" in v:
        v = v["elem"].get("val")
    if typ == "ifname":
        return f'"{v}"'
    if typ == "integer":
        try:
            return f"0x{int(str(v), 0):032x}"
        except ValueError:
            return str(v)
    return str(v)


def parse(listing: dict) -> GuardRuleset:
    decls: dict[str, str] = {}
    elements: dict[str, frozenset[str]] = {}
    chains: dict[str, str] = {}
    rules: dict[str, list[str]] = {}
    for item in listing.get("nftables", []):
        if len(item) != 1:
            continue
        (kind, obj), = item.items()
        if not isinstance(obj, dict) or obj.get("family") != FAMILY or obj.get("table", TABLE) != TABLE:
            continue
        if kind == "set":
            typ = obj.get("type", "")
            types = typ if isinstance(typ, list) else [typ]
            decls[obj["name"]] = "type " + " . ".join(types)
            out = set()
            for e in obj.get("elem", []) or []:
                if isinstance(e, dict) and "elem" in e:
                    e = e["elem"].get("val")
                parts = e["concat"] if isinstance(e, dict) and "concat" in e else [e]
                out.add(" . ".join(_field(p, types[i] if i < len(types) else "") for i, p in enumerate(parts)))
            elements[obj["name"]] = frozenset(out)
        elif kind == "chain":
            chains[obj["name"]] = f"{obj.get('hook', '')} {obj.get('prio', '')} {obj.get('policy', '')}"
            rules.setdefault(obj["name"], [])
        elif kind == "rule":
            rules.setdefault(obj["chain"], []).append(obj.get("comment", ""))
    want_decls = {n: SHOWN.get(n, d) for n, d in SETS}
    want_chains = {n: "prerouting -200 accept" for n, _, _ in antispoof.CHAINS}
    ok = decls == want_decls and chains == want_chains and all(
        rules.get(n, []) == [antispoof.RULE_COMMENT] * len(rs) for n, _, rs in antispoof.CHAINS)
    known = {k: v for k, v in elements.items() if k in SET_NAMES}
    return GuardRuleset(skeleton=antispoof.SKELETON if ok else "", elements=known,
                        digest=antispoof.DIGEST if ok else "drift")


def observe() -> GuardRuleset | None:
    nft = _nft()
    res = nft._run(["-j", "list", "table", FAMILY, TABLE], doing="list table")
    if res.returncode != 0:
        if "No such file or directory" in res.stderr:
            return None
        raise nft._error(res.stderr, f"list table {FAMILY} {TABLE}")
    try:
        return parse(json.loads(res.stdout))
    except (ValueError, KeyError, TypeError) as e:
        raise Unavailable(f"nftables: cannot read `nft -j list table {FAMILY} {TABLE}`: {e}") from None


def sync_script(guards: Iterable[Guard], delete: bool = False) -> str:
    """What makes the table hold exactly `guards` ('' when it does already); with `delete`,
    what removes it (when it exists)."""
    observed = observe()
    if delete:
        return antispoof.render_delete() if observed is not None else ""
    desired = antispoof.compile_guards(guards)
    if observed is None or not observed.same_skeleton(desired):
        return antispoof.render_full(desired)
    return antispoof.render_delta(observed, desired)


def change(add: Iterable[Guard] = (), remove: Iterable[Guard] = ()) -> None:
    """Add/remove endpoints' elements in one batch, without listing the table. NotFound when
    the table does not exist (nothing is changed)."""
    nft = _nft()
    script = antispoof.render_change(add, remove)
    if not script:
        return
    res = nft._run(["-f", "-"], input=script, doing="update anti-spoofing")
    if res.returncode != 0:
        if "No such file or directory" in res.stderr:
            raise NotFound(f"nftables: table {FAMILY} {TABLE} does not exist")
        raise nft._error(res.stderr, f"update table {FAMILY} {TABLE}")


def counters() -> dict[str, int]:
    """Frames dropped by each anti-spoofing rule: {rule text without its comment: packets}."""
    nft = _nft()
    res = nft._run(["-j", "list", "chain", FAMILY, TABLE, "prerouting"], doing="list chain")
    if res.returncode != 0:
        return {}
    out: dict[str, int] = {}
    try:
        items = json.loads(res.stdout).get("nftables", [])
    except ValueError:
        return {}
    texts = [r for _, _, rs in antispoof.CHAINS for r in rs]
    i = 0
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not rule:
            continue
        for st in rule.get("expr", []):
            if "counter" in st and i < len(texts):
                out[texts[i]] = int(st["counter"].get("packets", 0))
        i += 1
    return out

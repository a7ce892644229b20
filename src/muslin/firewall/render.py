"""Render Rulesets as nft scripts (pure). Each script is meant for ONE `nft -f -` call,
which the kernel applies as one atomic batch."""

from __future__ import annotations

from muslin.firewall.compiler import FAMILY, OWNER_CHAIN, SET_NAMES, TABLE, Ruleset, key_of

CHUNK = 256  # elements per `add element` line


def _elem_lines(verb: str, name: str, elems: list[str]) -> list[str]:
    out = []
    for i in range(0, len(elems), CHUNK):
        out.append(f"{verb} element {FAMILY} {TABLE} {name} {{ {', '.join(elems[i:i + CHUNK])} }}")
    return out


def render_full(rs: Ruleset) -> str:
    """Create (or atomically replace) the whole table with its elements."""
    lines = [f"table {FAMILY} {TABLE} {{}}", f"delete table {FAMILY} {TABLE}"]
    text = "\n".join(lines) + "\n" + rs.skeleton
    if rs.owner:
        text += (f"add chain {FAMILY} {TABLE} {OWNER_CHAIN}\n"
                 f'add rule {FAMILY} {TABLE} {OWNER_CHAIN} return comment "{rs.owner}"\n')
    adds: list[str] = []
    for name in SET_NAMES:
        adds += _elem_lines("add", name, sorted(rs.elements[name]))
    return text + "".join(line + "\n" for line in adds)


def render_delta(old: Ruleset, new: Ruleset) -> str:
    """Only element changes from `old` to `new` ('' when equal); deletes come first, so a
    map entry whose value changed is deleted then re-added in the same batch."""
    dels: list[str] = []
    adds: list[str] = []
    for name in SET_NAMES:
        o, n = old.elements[name], new.elements[name]
        gone = sorted({key_of(name, e) for e in o - n})
        dels += _elem_lines("delete", name, gone)
        adds += _elem_lines("add", name, sorted(n - o))
    return "".join(line + "\n" for line in dels + adds)


def render_delete() -> str:
    """Remove the table; succeeds whether or not it exists (one batch)."""
    return f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"

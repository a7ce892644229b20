"""Network policy's counters in the kernel: the packets dropped at each isolated endpoint
(the per-element counters of the drop sets of `inet muslin`, firewall/policy.py)."""

from __future__ import annotations

import json

from muslin.firewall.compiler import FAMILY, TABLE
from muslin.firewall.policy import COUNTER_SETS


def drop_counters() -> dict[str, dict[str, int]]:
    """{drop set: {address: packets}}; {} when the table is not there."""
    from muslin.dataplane import nft

    out: dict[str, dict[str, int]] = {}
    for name in COUNTER_SETS:
        res = nft._run(["-j", "list", "set", FAMILY, TABLE, name], doing="list set")
        if res.returncode != 0:
            continue
        try:
            items = json.loads(res.stdout).get("nftables", [])
        except ValueError:
            continue
        per: dict[str, int] = {}
        for item in items:
            s = item.get("set") if isinstance(item, dict) else None
            for e in (s or {}).get("elem", []) or []:
                if isinstance(e, dict) and "elem" in e:
                    per[str(e["elem"].get("val"))] = int((e["elem"].get("counter") or {}).get("packets", 0))
        out[name] = per
    return out

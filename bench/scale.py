"""The control plane at many hosts: the simulated cluster (src/muslin/lab/sim.py) at each N,
agents on the in-memory dataplane against one real etcd on loopback (started on free ports,
stopped by PID). `python -m bench --only scale [--levels 100,1000]`; `muslin lab simulate`
runs one N."""

from __future__ import annotations

import json
import time
from typing import Any, Callable


def run_scale(levels: list[int], smoke: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    from muslin.lab.sim import simulate

    out: dict[str, Any] = {}
    for n in levels:
        log(f"  simulated cluster of {n} hosts")
        t0 = time.monotonic()
        if smoke:
            r = simulate(n, idle=2, joins=1, churn=2, churn_seconds=2, log=log)
        else:
            r = simulate(n, idle=30, joins=5, churn=10, churn_seconds=30, log=log)
        r["wall_s"] = round(time.monotonic() - t0, 1)
        out[str(n)] = r
        log(f"  {n} hosts: {json.dumps({k: v for k, v in r.items() if k in ('setup_s', 'wall_s')})}")
    return out


def rows(res: dict) -> list[list[str]]:
    """Lines of the report table (bench/report.py)."""
    from muslin.lab.sim import summary

    sc = res.get("scale") or {}
    out = [["simulated cluster", k, sc[k]] for k in ("skipped", "error") if k in sc]
    for r in sc.values():
        if isinstance(r, dict) and "idle" in r:
            out += summary(r)
    return out

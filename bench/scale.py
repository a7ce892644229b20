"""The control plane at many hosts: the simulated cluster (src/muslin/lab/sim.py) at each N,
agents on the in-memory dataplane against one real etcd on loopback (started on free ports,
stopped by PID). `python -m bench --only scale [--levels 100,1000]`; `muslin lab simulate`
runs one N."""

from __future__ import annotations

import json
import time
from pathlib import Path
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
        r["one_agent"] = reconcile_cpu(n, 20 if smoke else 200)
        log(f"  one agent with {n} peers: {json.dumps(r['one_agent'])}")
        out[str(n)] = r
        log(f"  {n} hosts: {json.dumps({k: v for k, v in r.items() if k in ('setup_s', 'wall_s')})}")
    return out


def reconcile_cpu(n: int, events: int = 200) -> dict[str, float]:
    """One agent alone (a memory store, the in-memory dataplane) with n peers: the CPU of one
    peer event (a peer joining or leaving: reconcile_peers) and of one full reconcile (the
    periodic resync's diff against the kernel), in ms (time.process_time: this process only),
    and what the resync costs per second at its default period for n peers (resync_period)."""
    import tempfile

    from muslin.backends.model import ClusterConfig
    from muslin.control.agent import DEFAULT_RESYNC, Agent, hosts_prefix, init_config, resync_period
    from muslin.control.agent_host import FakeHost
    from muslin.lab.sim import CIDR, NETWORK, record
    from muslin.store.memory import MemoryStore

    st = MemoryStore()
    cfg = ClusterConfig(NETWORK, cidr=CIDR, host_prefix=24, backend="vxlan")
    init_config(st, cfg, probe=False)
    for i in range(n):
        r = record(i)
        st.put(hosts_prefix(NETWORK) + r.hostname, r.to_dict())
    with tempfile.TemporaryDirectory(prefix="muslin-bench-scale-") as d:
        a = Agent(st, NETWORK, "me", Path(d), log=lambda m: None, status=False,
                  host=FakeHost(ip="172.31.0.1", net="172.16.0.0/12"))
        a.cfg = cfg
        dev, ip, net, mtu = a.overlay().underlay()
        a.underlay_dev = dev
        a.register(ip, net, mtu)
        a._load_peers()
        a.reconcile()
        t = time.process_time()
        for j in range(events):
            r = record(n + j, "x")
            a.peers[r.hostname] = r
            a.reconcile_peers({r.hostname})
            del a.peers[r.hostname]
            a.reconcile_peers({r.hostname})
        ev = (time.process_time() - t) / (2 * events)
        t = time.process_time()
        for _ in range(5):
            a.reconcile()
        full = (time.process_time() - t) / 5
        a.close()
    period = resync_period(DEFAULT_RESYNC, n + 1)
    return {"peer_event_ms": round(ev * 1e3, 3), "full_reconcile_ms": round(full * 1e3, 1),
            "resync_period_s": round(period, 1), "resync_cpu_ms_per_s": round(full * 1e3 / period, 3)}


def rows(res: dict) -> list[list[str]]:
    """Lines of the report table (bench/report.py)."""
    from muslin.lab.sim import summary

    sc = res.get("scale") or {}
    out = [["simulated cluster", k, sc[k]] for k in ("skipped", "error") if k in sc]
    for r in sc.values():
        if isinstance(r, dict) and "idle" in r:
            out += summary(r)
            if "one_agent" in r:
                o = r["one_agent"]
                out.append([f"one agent with {r['hosts']} peers: a peer event", f"{o['peer_event_ms']} ms CPU",
                            f"a full reconcile (the periodic resync) {o['full_reconcile_ms']} ms"
                            + (f", every {o['resync_period_s']} s: {o['resync_cpu_ms_per_s']} ms/s"
                               if "resync_period_s" in o else "")])
    return out

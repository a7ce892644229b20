"""What `muslin cluster status|hosts` reports, read from the store (and, for this host, from
its agent's status file).

Per host of a cluster network: its record (subnet, underlay) under its *subnet lease* and
the time that lease has left; whether its agent runs (the liveness key
cluster/<net>/alive/<host>, under the short liveness lease); its peers (every other host
holding a subnet lease: the hosts its agent routes to); `healthy` and, when not, `reasons`.
A host whose agent is down stays routed while its subnet lease lasts: it is *degraded*,
not gone. For this host (its state dir has the agent's status file) the peers the agent
actually has and the problems it reports count too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from muslin.control.agent import list_alive, list_hosts, network_names, read_config
from muslin.model.errors import MuslinError
from muslin.store.base import Store


def lease_left(store: Store, lease: int) -> int | None:
    """Seconds a lease has left (-1: gone), or None when the store cannot tell."""
    fn = getattr(store, "lease_ttl", None)
    if not lease or fn is None:
        return None
    try:
        return int(fn(lease)[0])
    except MuslinError:
        return None


def local_status(state_dir: Path | None, network: str) -> dict[str, Any]:
    if state_dir is None:
        return {}
    try:
        return json.loads((state_dir / "cluster" / f"{network}.status.json").read_text())
    except (OSError, ValueError):
        return {}


def network_status(store: Store, network: str, state_dir: Path | None = None) -> dict[str, Any]:
    cfg = read_config(store, network)
    hosts = list_hosts(store, network)
    alive = list_alive(store, network)
    mine = local_status(state_dir, network)
    out: dict[str, Any] = {}
    for h in sorted(set(hosts) | set(alive)):
        rec, lease = hosts.get(h, (None, 0))
        reasons = []
        if rec is None:
            reasons.append("no subnet lease (it is leaving, or has not joined yet)")
        if h not in alive:
            reasons.append("no liveness key: its agent is not running (it stays routed while its subnet "
                           "lease lasts)")
        peers = sorted(x for x in hosts if x != h)
        d: dict[str, Any] = {"subnet": rec.subnet if rec else "", "subnet6": rec.subnet6 if rec else "",
                             "underlay": rec.underlay if rec else "",
                             "lease": f"{lease:x}" if lease else "", "lease_left": lease_left(store, lease),
                             "alive": h in alive, "agent": alive.get(h, {}), "peers": peers}
        if mine.get("hostname") == h:  # this host: what its agent itself reports
            seen = sorted(mine.get("peers", {}))
            d["local"] = {"peers": seen, "problems": mine.get("problems", []), "store_ok": mine.get("store_ok")}
            if rec is not None and seen != peers:
                reasons.append(f"its agent routes to {', '.join(seen) or 'no host'}, the store has "
                               f"{', '.join(peers) or 'no other host'}")
            reasons += mine.get("problems", [])
        d["healthy"] = not reasons
        d["reasons"] = reasons
        out[h] = d
    return {"network": network, "config": cfg.to_dict(), "hosts": out,
            "healthy": all(d["healthy"] for d in out.values())}


def status(store: Store, network: str = "", state_dir: Path | None = None) -> dict[str, Any]:
    """{"store": endpoint health (etcd), "networks": {name: network_status}}."""
    names = [network] if network else network_names(store)
    health_fn = getattr(store, "health", None)
    members = health_fn() if health_fn is not None else []
    nets = {n: network_status(store, n, state_dir) for n in names}
    return {"store": members, "networks": nets,
            "healthy": all(n["healthy"] for n in nets.values()) and all(m["ok"] for m in members)}


def degraded(s: dict[str, Any]) -> str:
    """One line naming what is not healthy in a status(), or ''."""
    bad = [f"etcd member {m['endpoint']} is down ({m.get('error', '')})" for m in s["store"] if not m["ok"]]
    for n, ns in s["networks"].items():
        hosts = [f"{h} ({'; '.join(d['reasons'])})" for h, d in ns["hosts"].items() if not d["healthy"]]
        if hosts:
            bad.append(f"cluster network {n} is degraded: " + ", ".join(hosts))
    return "; ".join(bad)


"""Measurements, as events: what a part of Muslin reports about its own work (a request
served, a store call, a reconcile) for whoever listens: muslind's metrics
(control/metrics.py). Without a listener `emit` costs one list lookup.

Pure: no I/O, standard library only, so every layer (store, cni, docker, control) may emit.
Each event has a name and keyword fields; docs/metrics.md says which metric each feeds.

Events emitted today (name: fields):
- phase: phase, seconds, ok (control/timings.py: every plan step and use-case total)
- cni_request: plugin, verb, seconds, rc (cni/server.py: each request muslind serves)
- docker_request: method, seconds, error ('' or the error's kind) (docker/server.py)
- error: source ('cni' or 'docker'), kind (the taxonomy's kind, or 'internal')
- store: backend, op, seconds, ok (control/metrics.py's measured store)
- reconcile: loop, seconds, changes (count), drift (bool: a periodic resync found changes)
- watch_lag: network, seconds (a watch event until the kernel is reconciled with it)
Hooks for what is not on main yet (the metric exists once the first event arrives):
- dns_query: qtype, rcode, seconds (the DNS server: one per answered query)
- policy_drop: network, n (network policy: packets dropped)
"""

from __future__ import annotations

from typing import Any, Callable

Listener = Callable[[str, dict[str, Any]], None]
LISTENERS: list[Listener] = []


def listening() -> bool:
    return bool(LISTENERS)


def emit(event: str, **fields: Any) -> None:
    """Tell every listener; a listener's failure never reaches the caller."""
    for fn in LISTENERS:
        try:
            fn(event, fields)
        except Exception:  # noqa: BLE001 - measuring must never break the work measured
            pass


def listen(fn: Listener) -> Callable[[], None]:
    """Add a listener; returns the function that removes it again."""
    LISTENERS.append(fn)
    return lambda: LISTENERS.remove(fn) if fn in LISTENERS else None

"""A store that times each call and reports it as an event `store` (muslin/events.py), for
muslind's metrics (store latency by backend and operation). `open_store` returns one only
while something listens (muslind with --metrics-address); everything else is the store's own."""

from __future__ import annotations

import time
from typing import Any

from muslin import events

TIMED = ("get", "list", "keys", "put", "delete", "delete_prefix", "txn", "revision", "grant_lease",
         "refresh_lease", "revoke_lease")


class MeasuredStore:
    def __init__(self, store: Any, backend: str) -> None:
        self._store = store
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in TIMED:
            return attr

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            ok = False
            try:
                out = attr(*a, **kw)
                ok = True
                return out
            finally:
                events.emit("store", backend=self._backend, op=name, seconds=time.perf_counter() - t0, ok=ok)

        return timed

    def __repr__(self) -> str:
        return f"MeasuredStore({self._store!r})"

"""An in-process Store (tests, single-process tools). Thread-safe; same semantics as SQLite."""

from __future__ import annotations

import copy
import json
import threading
import time
from typing import Any, Iterator

from muslin.model.errors import Conflict, Invalid, NotFound, Unavailable
from muslin.store.base import KV, Compare, Delete, Event, Op, Put

HISTORY = 10000


def _frozen(value: Any) -> Any:
    """A private deep copy; also checks the value is JSON-able like the other backends."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise Invalid(f"store value is not JSON-serialisable: {e}") from None


class MemoryStore:
    def __init__(self, history: int = HISTORY) -> None:
        self._kv: dict[str, KV] = {}
        self._rev = 0
        self._events: list[Event] = []
        self._compacted = 0  # highest revision whose events were dropped
        self._history = history
        self._leases: dict[int, tuple[float, float]] = {}  # id -> (ttl, expires_at)
        self._next_lease = 1
        self._cond = threading.Condition()
        self._closed = False

    # --- internals (caller holds the lock) ---------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("store is closed")

    def _expire(self) -> None:
        now = time.time()
        dead = [lid for lid, (_, exp) in self._leases.items() if exp <= now]
        if not dead:
            return
        keys = [k for k, kv in self._kv.items() if kv.lease in dead]
        for lid in dead:
            del self._leases[lid]
        if keys:
            self._commit([Delete(k) for k in sorted(keys)])

    def _compare_ok(self, c: Compare) -> bool:
        kv = self._kv.get(c.key)
        return (kv.mod_revision if kv else 0) == c.mod_revision

    def _commit(self, ops: list[Op]) -> int:
        """Apply ops as one revision (only if they change something)."""
        rev = self._rev + 1
        events: list[Event] = []
        for op in ops:
            if isinstance(op, Put):
                if op.lease and op.lease not in self._leases:
                    raise NotFound(f"lease {op.lease} not found (expired or revoked)")
        for op in ops:
            if isinstance(op, Put):
                old = self._kv.get(op.key)
                value = _frozen(op.value)
                self._kv[op.key] = KV(op.key, value, old.create_revision if old else rev, rev, op.lease)
                events.append(Event("put", op.key, value, rev))
            else:
                keys = sorted(k for k in self._kv if k.startswith(op.key)) if op.prefix else (
                    [op.key] if op.key in self._kv else [])
                for k in keys:
                    del self._kv[k]
                    events.append(Event("delete", k, None, rev))
        if not events:
            return self._rev
        self._rev = rev
        self._events.extend(events)
        if len(self._events) > self._history + self._history // 10:
            cut = len(self._events) - self._history
            while cut < len(self._events) and self._events[cut].revision == self._events[cut - 1].revision:
                cut += 1
            self._compacted = self._events[cut - 1].revision
            del self._events[:cut]
        self._cond.notify_all()
        return rev

    # --- Store API ---------------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        with self._cond:
            self._check_open()
            self._expire()
            kv = self._kv.get(key)
            return copy.deepcopy(kv) if kv else None

    def list(self, prefix: str) -> list[KV]:
        with self._cond:
            self._check_open()
            self._expire()
            return [copy.deepcopy(self._kv[k]) for k in sorted(self._kv) if k.startswith(prefix)]

    def keys(self, prefix: str, limit: int = 0) -> list[str]:
        with self._cond:
            self._check_open()
            self._expire()
            found = [k for k in sorted(self._kv) if k.startswith(prefix)]
            return found[:limit] if limit else found

    def put(self, key: str, value: Any, *, expect: int | None = None, lease: int = 0) -> int:
        cmp = [] if expect is None else [Compare(key, expect)]
        return self.txn(cmp, [Put(key, value, lease)])

    def delete(self, key: str, *, expect: int | None = None) -> bool:
        with self._cond:
            self._check_open()
            self._expire()
            if expect is not None and not self._compare_ok(Compare(key, expect)):
                raise Conflict(f"store key {key} changed (expected revision {expect})")
            existed = key in self._kv
            self._commit([Delete(key)])
            return existed

    def delete_prefix(self, prefix: str) -> int:
        with self._cond:
            self._check_open()
            self._expire()
            n = sum(1 for k in self._kv if k.startswith(prefix))
            self._commit([Delete(prefix, prefix=True)])
            return n

    def txn(self, compares: list[Compare], ops: list[Op]) -> int:
        with self._cond:
            self._check_open()
            self._expire()
            for c in compares:
                if not self._compare_ok(c):
                    kv = self._kv.get(c.key)
                    raise Conflict(f"store key {c.key} changed (revision {kv.mod_revision if kv else 0}, "
                                   f"expected {c.mod_revision})")
            return self._commit(list(ops))

    def revision(self) -> int:
        with self._cond:
            self._check_open()
            self._expire()
            return self._rev

    def watch(self, prefix: str, from_revision: int, timeout: float | None = None) -> Iterator[Event]:
        nxt = from_revision
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                if self._closed:
                    return
                self._expire()
                if self._compacted and nxt <= self._compacted:
                    raise Unavailable(f"store history before revision {self._compacted + 1} was compacted; "
                                      f"cannot watch from {nxt}")
                batch = [e for e in self._events if e.revision >= nxt and e.key.startswith(prefix)]
                if self._events:
                    nxt = max(nxt, self._events[-1].revision + 1)
                if not batch:
                    wait = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                    if wait <= 0:
                        return
                    self._cond.wait(wait)
                    continue
            for e in batch:
                yield copy.deepcopy(e)
            if deadline is not None:
                deadline = time.monotonic() + timeout  # type: ignore[operator]

    def grant_lease(self, ttl: float) -> int:
        if ttl <= 0:
            raise Invalid(f"lease ttl must be positive, got {ttl}")
        with self._cond:
            self._check_open()
            lid = self._next_lease
            self._next_lease += 1
            self._leases[lid] = (ttl, time.time() + ttl)
            return lid

    def refresh_lease(self, lease: int) -> None:
        with self._cond:
            self._check_open()
            self._expire()
            if lease not in self._leases:
                raise NotFound(f"lease {lease} not found (expired or revoked)")
            ttl, _ = self._leases[lease]
            self._leases[lease] = (ttl, time.time() + ttl)

    def lease_ttl(self, lease: int) -> tuple[int, int]:
        """(seconds left, granted TTL); -1 seconds left when the lease is gone."""
        with self._cond:
            self._expire()
            if lease not in self._leases:
                return -1, 0
            ttl, until = self._leases[lease]
            return max(0, int(until - time.time())), int(ttl)

    def revoke_lease(self, lease: int) -> None:
        with self._cond:
            self._check_open()
            self._expire()
            if self._leases.pop(lease, None) is None:
                return
            keys = sorted(k for k, kv in self._kv.items() if kv.lease == lease)
            self._commit([Delete(k) for k in keys])

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

"""A local copy of one prefix of a Store, kept current by one long-lived watch (the
informer pattern of Kubernetes' client-go, on the Store protocol).

`load()` lists the prefix once (`snapshot`: the keys and the revision they were read at)
and opens one watch from the next revision; `poll(timeout)` hands over what the watch
brought, applied to the copy, as `Change`s. When the watch cannot resume (history
compacted: a gap), the cache lists again, reports the difference between what it held
and what it found, and watches from there; `load()` does the same on demand (a rare
periodic check). Nothing else reads the store: between a list and the next, the cost is
the events of the prefix, whatever its size.

`keep(key)` chooses the keys held (the others' events are skipped); `decode(key, value)`
turns a stored value into what is held (compared with == to tell a change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from muslin.store.base import Compacted, Store, Watch


@dataclass(frozen=True)
class Change:
    key: str
    old: Any  # None: the key was not held
    new: Any  # None: the key is gone


class WatchCache:
    def __init__(self, store: Store, prefix: str, keep: Callable[[str], bool] | None = None,
                 decode: Callable[[str, Any], Any] | None = None) -> None:
        self.store, self.prefix = store, prefix
        self.keep = keep or (lambda key: True)
        self.decode = decode or (lambda key, value: value)
        self.items: dict[str, Any] = {}
        self.revision = 0  # every change up to this revision is in items
        self.lists = 0  # snapshots taken
        self.gaps = 0  # watches that could not resume
        self.events = 0  # events applied
        self._watch: Watch | None = None

    @property
    def loaded(self) -> bool:
        return self._watch is not None

    @property
    def connected(self) -> bool:
        return self._watch is not None and self._watch.connected

    def load(self) -> list[Change]:
        """List the prefix, report what differs from what was held, watch from there."""
        rev, kvs = self.store.snapshot(self.prefix)
        self.lists += 1
        fresh = {}
        for kv in kvs:
            if self.keep(kv.key):
                value = self._decode(kv.key, kv.value)
                if value is not None:
                    fresh[kv.key] = value
        old = self.items
        changes = [Change(k, old.get(k), v) for k, v in fresh.items() if old.get(k) != v]
        changes += [Change(k, v, None) for k, v in old.items() if k not in fresh]
        self.items, self.revision = fresh, rev
        if self._watch is not None:
            self._watch.close()
        self._watch = self.store.open_watch(self.prefix, rev + 1)
        return changes

    def poll(self, timeout: float | None = None) -> list[Change]:
        """What changed since the last poll, waiting up to `timeout` seconds for the first
        event (see Watch.get); a gap lists again (and reports the difference)."""
        if self._watch is None:
            return self.load()
        try:
            events = self._watch.get(timeout)
        except Compacted:
            self.gaps += 1
            return self.load()
        changes = []
        for ev in events:
            self.events += 1
            if not self.keep(ev.key):
                continue
            old = self.items.get(ev.key)
            new = None if ev.type == "delete" else self._decode(ev.key, ev.value)
            if new == old:
                continue
            if new is None:
                del self.items[ev.key]
            else:
                self.items[ev.key] = new
            changes.append(Change(ev.key, old, new))
        self.revision = max(self.revision, self._watch.next_revision - 1)
        return changes

    def _decode(self, key: str, value: Any) -> Any:
        try:
            return self.decode(key, value)
        except (TypeError, ValueError, KeyError, AttributeError):
            return None  # a malformed value is as if absent

    def wake(self) -> None:
        if self._watch is not None:
            self._watch.wake()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

"""Fault injection for the use-cases: the control layer on the fake kernel and a store whose
writes count (and can fail) like the kernel's mutating calls, sharing one counter."""

from __future__ import annotations

import copy
import itertools
from typing import Any, Callable

from muslin.control.service import Muslin
from muslin.dataplane.fake import FakeKernel
from muslin.model import names
from muslin.store.memory import MemoryStore


class CountingStore:
    """A MemoryStore whose writes go through the fake kernel's fault counter."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.inner = MemoryStore()
        self.kernel = kernel

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, key, value, **kw):  # type: ignore[no-untyped-def]
        self.kernel._mut("store.put", key)
        return self.inner.put(key, value, **kw)

    def delete(self, key, **kw):  # type: ignore[no-untyped-def]
        self.kernel._mut("store.delete", key)
        return self.inner.delete(key, **kw)

    def txn(self, compares, ops):  # type: ignore[no-untyped-def]
        self.kernel._mut("store.txn", tuple(getattr(o, "key", "") for o in ops))
        return self.inner.txn(compares, ops)

    def dump(self) -> dict[str, Any]:
        return {kv.key: copy.deepcopy(kv.value) for kv in self.inner.list("")}


def _macs():  # type: ignore[no-untyped-def]
    for i in itertools.count(1):
        yield "02:4d:00:" + ":".join(f"{b:02x}" for b in i.to_bytes(3, "big"))


class World:
    """The control layer on the fake kernel and a counting store. Worlds made the same way
    are equal: the MACs Muslin would pick at random come from a sequence that restarts."""

    def __init__(self, state_dir) -> None:  # type: ignore[no-untyped-def]
        seq = _macs()
        names.random_mac = lambda: next(seq)
        self.kernel = FakeKernel()
        self.store = CountingStore(self.kernel)
        self.m = Muslin(self.store, state_dir, kernel=lambda: self.kernel)  # type: ignore[arg-type]

    def snapshot(self) -> dict[str, Any]:
        return {"kernel": self.kernel.snapshot(), "store": self.store.dump()}


def calls_of(make_world: Callable[[], World], op: Callable[[World], Any]) -> list[str]:
    """The mutating calls (kernel and store) `op` makes when nothing fails."""
    w = make_world()
    w.kernel.arm(None)
    op(w)
    return w.kernel.calls_since_armed

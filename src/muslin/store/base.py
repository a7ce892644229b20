"""The Store interface: a small etcd-like key-value store with revisions.

Keys are '/'-separated strings such as 'networks/web'. Values are JSON-able objects
(dicts, lists, strings, numbers). Every write bumps one store-wide revision; each key
carries the revision of its creation and of its last change. All backends (memory,
sqlite, etcd) pass one contract suite (tests/unit/test_store_contract.py).

Compare-and-swap:
- put(key, value, expect=None): unconditional.
- put(key, value, expect=0): only if the key does not exist.
- put(key, value, expect=N): only if the key's mod_revision is N.
A failed condition raises model.errors.Conflict and changes nothing.

txn(compares, ops) applies all ops atomically if every compare holds, else raises
Conflict and changes nothing. Leases: keys put with lease=ID vanish when the lease
expires or is revoked (and produce delete events).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Union


@dataclass(frozen=True)
class KV:
    key: str
    value: Any
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Compare:
    """Holds when the key's mod_revision equals `mod_revision` (0 = key absent)."""

    key: str
    mod_revision: int


@dataclass(frozen=True)
class Put:
    key: str
    value: Any
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


Op = Union[Put, Delete]


@dataclass(frozen=True)
class Event:
    type: str  # "put" or "delete"
    key: str
    value: Any  # None for deletes
    revision: int


class Store(Protocol):
    def get(self, key: str) -> KV | None: ...

    def list(self, prefix: str) -> list[KV]:
        """All keys starting with prefix, sorted by key."""

    def keys(self, prefix: str, limit: int = 0) -> list[str]:
        """The keys only (no values decoded), sorted; at most `limit` (0 = all)."""

    def put(self, key: str, value: Any, *, expect: int | None = None, lease: int = 0) -> int:
        """Write; returns the new store revision. Raises Conflict if `expect` fails."""

    def delete(self, key: str, *, expect: int | None = None) -> bool:
        """Delete; True if it existed. Raises Conflict if `expect` fails."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under prefix; returns how many."""

    def txn(self, compares: list[Compare], ops: list[Op]) -> int:
        """Atomic multi-key write; returns the new revision or raises Conflict."""

    def revision(self) -> int:
        """The store's current revision."""

    def watch(self, prefix: str, from_revision: int, timeout: float | None = None) -> Iterator[Event]:
        """Events under prefix with revision >= from_revision, in order, blocking for new
        ones. Stops after `timeout` seconds without an event (None: forever) or when
        close() is called. Resuming from a revision after a disconnect loses nothing
        (unless history was compacted: then raises Unavailable)."""

    def grant_lease(self, ttl: float) -> int: ...

    def refresh_lease(self, lease: int) -> None:
        """Raises NotFound if the lease has expired."""

    def revoke_lease(self, lease: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach etcd beyond its URL (docs/multihost.md, "Store URL and options"):
    `ca` the CA file that signed the members' certificates (etcds:// without it: the
    system's CAs), `cert`/`key` this client's certificate and key (etcd's
    --client-cert-auth), `user`/`password` etcd's own authentication."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    user: str = ""
    password: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.ca or self.cert or self.key)

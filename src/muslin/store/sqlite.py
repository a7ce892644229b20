"""The embedded default Store: one SQLite file, safe for many processes at once.

WAL mode and a busy timeout; every write runs in BEGIN IMMEDIATE, so concurrent CNI
plugin processes serialise on the database lock and compare-and-swap is exact.
Tables: kv (the keys), meta (store revision, compaction point), events (watch history,
pruned to the last ~HISTORY events), leases (lazy expiry: expired leases' keys are
deleted, with delete events, on the next access by anyone).
Opening costs one connection and (first time only) the schema: well under 5 ms.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from muslin.model.errors import Conflict, Invalid, NotFound, Unavailable
from muslin.store.base import KV, Compacted, Compare, Delete, Event, Op, Put, iterate

HISTORY = 10000
POLL = 0.05
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 0), revision INTEGER NOT NULL, compacted INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(id, revision, compacted) VALUES (0, 0, 0);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, rev INTEGER NOT NULL, type TEXT NOT NULL, key TEXT NOT NULL, value TEXT);
CREATE INDEX IF NOT EXISTS events_rev ON events(rev);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ttl REAL NOT NULL, expires_at REAL NOT NULL);
"""


def _upper(prefix: str) -> str | None:
    """Smallest string greater than every string starting with prefix (code point order)."""
    for i in range(len(prefix) - 1, -1, -1):
        c = ord(prefix[i])
        if c < 0x10FFFF:
            nc = c + 1
            if 0xD800 <= nc <= 0xDFFF:
                nc = 0xE000
            return prefix[:i] + chr(nc)
    return None


def _prefix_sql(prefix: str, col: str = "key") -> tuple[str, tuple]:
    if not prefix:
        return "1", ()
    up = _upper(prefix)
    if up is None:
        return f"{col} >= ?", (prefix,)
    return f"{col} >= ? AND {col} < ?", (prefix, up)


def _dump(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise Invalid(f"store value is not JSON-serialisable: {e}") from None


class SqliteStore:
    def __init__(self, path: str | os.PathLike[str], history: int = HISTORY, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        self._history = history
        self._lock = threading.RLock()
        self._closed = False
        try:
            parent = Path(self.path).parent
            if not parent.is_dir():
                parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            if not os.path.exists(self.path):
                os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                self._init_schema()
        except sqlite3.Error as e:
            raise Unavailable(f"store {self.path}: cannot open: {e}") from None
        except OSError as e:
            raise Unavailable(f"store {self.path}: cannot open: {e.strerror}") from None

    def _init_schema(self) -> None:
        db = self._db
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # --- plumbing ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable(f"store {self.path} is closed")

    def _read(self, fn):  # type: ignore[no-untyped-def]
        with self._lock:
            self._check_open()
            try:
                if self._expired_exist():
                    self._write(lambda: None)
                return fn()
            except sqlite3.Error as e:
                raise Unavailable(f"store {self.path}: {e}") from None

    def _write(self, fn):  # type: ignore[no-untyped-def]
        """Run fn inside BEGIN IMMEDIATE (after expiring leases); commit, or roll back on any error."""
        with self._lock:
            self._check_open()
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise Unavailable(f"store {self.path}: cannot lock: {e}") from None
            try:
                self._expire_locked()
                out = fn()
                db.execute("COMMIT")
                return out
            except BaseException as e:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(e, sqlite3.Error):
                    raise Unavailable(f"store {self.path}: {e}") from None
                raise

    def _expired_exist(self) -> bool:
        return self._db.execute("SELECT 1 FROM leases WHERE expires_at <= ? LIMIT 1",
                                (time.time(),)).fetchone() is not None

    def _expire_locked(self) -> None:
        db = self._db
        dead = [r[0] for r in db.execute("SELECT id FROM leases WHERE expires_at <= ?", (time.time(),))]
        if not dead:
            return
        qs = ",".join("?" * len(dead))
        keys = [r[0] for r in db.execute(f"SELECT key FROM kv WHERE lease IN ({qs}) ORDER BY key", dead)]
        db.execute(f"DELETE FROM leases WHERE id IN ({qs})", dead)
        if keys:
            self._apply([Delete(k) for k in keys])

    def _mod_rev(self, key: str) -> int:
        row = self._db.execute("SELECT mod_rev FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0

    def _apply(self, ops: list[Op]) -> int:
        """Apply ops as one new revision (inside a write txn); no revision if nothing changed."""
        db = self._db
        for op in ops:
            if isinstance(op, Put) and op.lease:
                if db.execute("SELECT 1 FROM leases WHERE id = ?", (op.lease,)).fetchone() is None:
                    raise NotFound(f"lease {op.lease} not found (expired or revoked)")
        rev, compacted = db.execute("SELECT revision, compacted FROM meta WHERE id = 0").fetchone()
        new = rev + 1
        changed = 0
        for op in ops:
            if isinstance(op, Put):
                text = _dump(op.value)
                db.execute(
                    "INSERT INTO kv(key, value, create_rev, mod_rev, lease) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev, "
                    "lease = excluded.lease", (op.key, text, new, new, op.lease))
                db.execute("INSERT INTO events(rev, type, key, value) VALUES (?, 'put', ?, ?)", (new, op.key, text))
                changed += 1
            elif isinstance(op, Delete):
                if op.prefix:
                    where, args = _prefix_sql(op.key)
                    keys = [r[0] for r in db.execute(f"SELECT key FROM kv WHERE {where} ORDER BY key", args)]
                else:
                    keys = [op.key] if db.execute("SELECT 1 FROM kv WHERE key = ?", (op.key,)).fetchone() else []
                for k in keys:
                    db.execute("DELETE FROM kv WHERE key = ?", (k,))
                    db.execute("INSERT INTO events(rev, type, key, value) VALUES (?, 'delete', ?, NULL)", (new, k))
                changed += len(keys)
        if not changed:
            return rev
        if new % 100 == 0 or new - compacted > 2 * self._history:
            cut = new - self._history
            if cut > compacted:
                db.execute("DELETE FROM events WHERE rev <= ?", (cut,))
                compacted = cut
        db.execute("UPDATE meta SET revision = ?, compacted = ? WHERE id = 0", (new, compacted))
        return new

    def _conflict(self, c: Compare) -> Conflict:
        return Conflict(f"store key {c.key} changed (revision {self._mod_rev(c.key)}, expected {c.mod_revision})")

    # --- Store API ---------------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        def q() -> KV | None:
            row = self._db.execute("SELECT value, create_rev, mod_rev, lease FROM kv WHERE key = ?",
                                   (key,)).fetchone()
            return KV(key, json.loads(row[0]), row[1], row[2], row[3]) if row else None
        return self._read(q)

    def list(self, prefix: str) -> list[KV]:
        where, args = _prefix_sql(prefix)

        def q() -> list[KV]:
            rows = self._db.execute(
                f"SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE {where} ORDER BY key", args)
            return [KV(r[0], json.loads(r[1]), r[2], r[3], r[4]) for r in rows]
        return self._read(q)

    def keys(self, prefix: str, limit: int = 0) -> list[str]:
        """The keys under prefix, in order, without decoding values (at most `limit` if > 0).
        Not part of the Store protocol: callers fall back to `list` on other stores."""
        where, args = _prefix_sql(prefix)
        tail = f" LIMIT {int(limit)}" if limit > 0 else ""

        def q() -> list[str]:
            return [r[0] for r in self._db.execute(f"SELECT key FROM kv WHERE {where} ORDER BY key{tail}", args)]
        return self._read(q)

    def put(self, key: str, value: Any, *, expect: int | None = None, lease: int = 0) -> int:
        return self.txn([] if expect is None else [Compare(key, expect)], [Put(key, value, lease)])

    def delete(self, key: str, *, expect: int | None = None) -> bool:
        def w() -> bool:
            if expect is not None and self._mod_rev(key) != expect:
                raise self._conflict(Compare(key, expect))
            existed = self._mod_rev(key) != 0
            self._apply([Delete(key)])
            return existed
        return self._write(w)

    def delete_prefix(self, prefix: str) -> int:
        def w() -> int:
            where, args = _prefix_sql(prefix)
            n = self._db.execute(f"SELECT count(*) FROM kv WHERE {where}", args).fetchone()[0]
            self._apply([Delete(prefix, prefix=True)])
            return n
        return self._write(w)

    def txn(self, compares: list[Compare], ops: list[Op]) -> int:
        def w() -> int:
            for c in compares:
                if self._mod_rev(c.key) != c.mod_revision:
                    raise self._conflict(c)
            return self._apply(list(ops))
        return self._write(w)

    def revision(self) -> int:
        return self._read(lambda: self._db.execute("SELECT revision FROM meta WHERE id = 0").fetchone()[0])

    def snapshot(self, prefix: str) -> tuple[int, list[KV]]:
        where, args = _prefix_sql(prefix)

        def q() -> tuple[int, list[KV]]:
            db = self._db
            db.execute("BEGIN")  # one snapshot for meta + kv
            try:
                rev = db.execute("SELECT revision FROM meta WHERE id = 0").fetchone()[0]
                rows = db.execute(
                    f"SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE {where} ORDER BY key", args).fetchall()
            finally:
                db.execute("COMMIT")
            return rev, [KV(r[0], json.loads(r[1]), r[2], r[3], r[4]) for r in rows]
        return self._read(q)

    def watch(self, prefix: str, from_revision: int, timeout: float | None = None) -> Iterator[Event]:
        return iterate(self.open_watch(prefix, from_revision), timeout)

    def open_watch(self, prefix: str, from_revision: int) -> "SqliteWatch":
        return SqliteWatch(self, prefix, from_revision)

    def compact(self, revision: int) -> None:
        def w() -> None:
            rev, compacted = self._db.execute("SELECT revision, compacted FROM meta WHERE id = 0").fetchone()
            cut = min(int(revision), rev + 1) - 1
            if cut > compacted:
                self._db.execute("DELETE FROM events WHERE rev <= ?", (cut,))
                self._db.execute("UPDATE meta SET compacted = ? WHERE id = 0", (cut,))
        self._write(w)

    def _events_from(self, prefix: str, nxt: int) -> tuple[list[Event], int]:
        """(events under prefix from nxt on, the next revision), from one snapshot."""
        where, args = _prefix_sql(prefix)
        with self._lock:
            if self._closed:
                return [], nxt
            self._read(lambda: None)  # lazy lease expiry
            db = self._db
            try:
                db.execute("BEGIN")  # one snapshot for meta + events
                rev, compacted = db.execute("SELECT revision, compacted FROM meta WHERE id = 0").fetchone()
                rows = [] if compacted and nxt <= compacted else db.execute(
                    f"SELECT rev, type, key, value FROM events WHERE rev >= ? AND rev <= ? AND {where} "
                    "ORDER BY id", (nxt, rev, *args)).fetchall()
                db.execute("COMMIT")
            except sqlite3.Error as e:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise Unavailable(f"store {self.path}: {e}") from None
        if compacted and nxt <= compacted:
            raise Compacted(f"store history before revision {compacted + 1} was compacted; cannot watch from {nxt}")
        return [Event(r[1], r[2], json.loads(r[3]) if r[3] is not None else None, r[0]) for r in rows], max(nxt, rev + 1)

    def grant_lease(self, ttl: float) -> int:
        if ttl <= 0:
            raise Invalid(f"lease ttl must be positive, got {ttl}")

        def w() -> int:
            cur = self._db.execute("INSERT INTO leases(ttl, expires_at) VALUES (?, ?)", (ttl, time.time() + ttl))
            return int(cur.lastrowid)
        return self._write(w)

    def refresh_lease(self, lease: int) -> None:
        def w() -> None:
            row = self._db.execute("SELECT ttl FROM leases WHERE id = ?", (lease,)).fetchone()
            if row is None:
                raise NotFound(f"lease {lease} not found (expired or revoked)")
            self._db.execute("UPDATE leases SET expires_at = ? WHERE id = ?", (time.time() + row[0], lease))
        self._write(w)

    def revoke_lease(self, lease: int) -> None:
        def w() -> None:
            if self._db.execute("DELETE FROM leases WHERE id = ?", (lease,)).rowcount == 0:
                return
            keys = [r[0] for r in self._db.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,))]
            self._apply([Delete(k) for k in keys])
        self._write(w)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqliteWatch:
    """Store.open_watch on SQLite: the events table polled every POLL seconds (another
    process may be the writer, so there is nothing to wait on but the file)."""

    def __init__(self, store: SqliteStore, prefix: str, from_revision: int) -> None:
        self.store, self.prefix, self.next_revision = store, prefix, max(1, int(from_revision))
        self._wake = threading.Event()
        self._closed = False

    @property
    def connected(self) -> bool:
        return not self.store._closed

    def get(self, timeout: float | None = None) -> list[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (self._closed or self.store._closed):
            batch, self.next_revision = self.store._events_from(self.prefix, self.next_revision)
            if batch or self._wake.is_set():
                self._wake.clear()
                return batch
            wait = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if wait <= 0:
                return []
            self._wake.wait(wait)
        return []

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

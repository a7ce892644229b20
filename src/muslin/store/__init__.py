"""Stores: memory, sqlite (embedded default), etcd. `open_store` picks one from a URL or path.

Imports stay light: the etcd client is imported only for etcd:// URLs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from muslin.model.errors import Invalid, Unavailable

if TYPE_CHECKING:
    from muslin.store.base import Store

DEFAULT_STATE_DIR = "/var/lib/muslin"
DB_NAME = "muslin.db"


def default_state_dir() -> Path:
    """$MUSLIN_STATE_DIR, else /var/lib/muslin."""
    return Path(os.environ.get("MUSLIN_STATE_DIR") or DEFAULT_STATE_DIR)


def _ensure_dir(d: Path) -> None:
    try:
        d.mkdir(parents=True, mode=0o700, exist_ok=True)
    except OSError as e:
        raise Unavailable(f"state directory {d}: {e.strerror}") from None


def open_store(url_or_path: str | os.PathLike[str] | None = None) -> Store:
    """Open a Store.

    - None: `<default_state_dir()>/muslin.db` (directory created 0700);
    - 'memory://': a fresh MemoryStore;
    - 'etcd://host:port[,host:port...]': EtcdStore (imported lazily);
    - 'sqlite:///abs/path.db' or a path ending in '.db': that SQLite file;
    - any other path: a directory holding `muslin.db` (created 0700).
    """
    if url_or_path is None or str(url_or_path) == "":
        d = default_state_dir()
        _ensure_dir(d)
        from muslin.store.sqlite import SqliteStore
        return SqliteStore(d / DB_NAME)
    s = os.fspath(url_or_path)
    if s.startswith("etcd://"):
        rest = s[len("etcd://"):].strip("/")
        endpoints = [e.strip() for e in rest.split(",") if e.strip()]
        if not endpoints:
            raise Invalid(f"store URL {s!r} names no etcd endpoint (expected etcd://host:port[,host:port])")
        for e in endpoints:
            host, _, port = e.rpartition(":")
            if not host or not port.isdigit():
                raise Invalid(f"store URL {s!r}: endpoint {e!r} is not host:port")
        from muslin.store.etcd import EtcdStore  # lazy: pulls in the etcd client
        return EtcdStore(endpoints)
    if s.startswith("memory://"):
        from muslin.store.memory import MemoryStore
        return MemoryStore()
    if s.startswith("sqlite://"):
        s = s[len("sqlite://"):]
        if not s:
            raise Invalid("store URL 'sqlite://' names no file (expected sqlite:///path/to/muslin.db)")
    elif "://" in s:
        raise Invalid(f"store URL {s!r} has an unknown scheme (use etcd://, sqlite:// or a path)")
    from muslin.store.sqlite import SqliteStore
    p = Path(s)
    if p.suffix == ".db" or (p.exists() and p.is_file()):
        _ensure_dir(p.parent)
        return SqliteStore(p)
    _ensure_dir(p)
    return SqliteStore(p / DB_NAME)

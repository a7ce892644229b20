"""Stores: memory, sqlite (embedded default), etcd. `open_store` picks one from a URL or path.

Imports stay light: the etcd client is imported only for etcd:// URLs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from muslin import events
from muslin.model.errors import Invalid, Unavailable

from muslin.store.base import EtcdOptions

if TYPE_CHECKING:
    from muslin.store.base import Store

ETCD_SCHEMES = ("etcd://", "etcds://")

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


def etcd_endpoints(url: str) -> tuple[list[str], bool]:
    """'etcd://h1:2379,h2:2379' -> (['h1:2379', 'h2:2379'], False); etcds:// -> TLS (True)."""
    tls = url.startswith("etcds://")
    rest = url.split("://", 1)[1].strip("/")
    endpoints = [e.strip() for e in rest.split(",") if e.strip()]
    if not endpoints:
        raise Invalid(f"store URL {url!r} names no etcd endpoint (expected etcd://host:port[,host:port])")
    for e in endpoints:
        host, _, port = e.rpartition(":")
        if not host or not port.isdigit() or "/" in e or "@" in e:
            raise Invalid(f"store URL {url!r}: endpoint {e!r} is not host:port")
    return endpoints, tls


def open_store(url_or_path: str | os.PathLike[str] | None = None, etcd: EtcdOptions | None = None) -> Store:
    """Open a Store (timed call by call while muslind's metrics listen: store/measured.py)."""
    store = _open(url_or_path, etcd)
    if events.LISTENERS:
        from muslin.store.measured import MeasuredStore

        return MeasuredStore(store, type(store).__name__.removesuffix("Store").lower())  # type: ignore[return-value]
    return store


def _open(url_or_path: str | os.PathLike[str] | None = None, etcd: EtcdOptions | None = None) -> Store:
    """Open a Store.

    - None: `<default_state_dir()>/muslin.db` (directory created 0700);
    - 'memory://': a fresh MemoryStore;
    - 'etcd://host:port[,host:port...]': EtcdStore over http (imported lazily);
    - 'etcds://host:port[,host:port...]': EtcdStore over https; `etcd` gives the CA, the
      client certificate and key, and the user and password (either scheme; other stores
      ignore it: muslind's one set of etcd options serves its store and its cluster store);
    - 'sqlite:///abs/path.db' or a path ending in '.db': that SQLite file;
    - any other path: a directory holding `muslin.db` (created 0700).
    """
    if url_or_path is None or str(url_or_path) == "":
        d = default_state_dir()
        _ensure_dir(d)
        from muslin.store.sqlite import SqliteStore
        return SqliteStore(d / DB_NAME)
    s = os.fspath(url_or_path)
    if s.startswith(ETCD_SCHEMES):
        endpoints, tls = etcd_endpoints(s)
        opts = etcd or EtcdOptions()
        if opts.tls and not tls:
            raise Invalid(f"store URL {s!r} is plain http, but an etcd CA or client certificate was given "
                          "(use etcds://)")
        from muslin.store.etcd import EtcdStore  # lazy: pulls in the etcd client
        return EtcdStore(endpoints, options=opts, tls=tls)
    if s.startswith("memory://"):
        from muslin.store.memory import MemoryStore
        return MemoryStore()
    if s.startswith("sqlite://"):
        s = s[len("sqlite://"):]
        if not s:
            raise Invalid("store URL 'sqlite://' names no file (expected sqlite:///path/to/muslin.db)")
    elif "://" in s:
        raise Invalid(f"store URL {s!r} has an unknown scheme (use etcd://, etcds://, sqlite:// or a path)")
    from muslin.store.sqlite import SqliteStore
    p = Path(s)
    if p.suffix == ".db" or (p.exists() and p.is_file()):
        _ensure_dir(p.parent)
        return SqliteStore(p)
    _ensure_dir(p)
    return SqliteStore(p / DB_NAME)

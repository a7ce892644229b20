"""One contract suite for every Store backend.

Add a backend with one line in BACKENDS: a name -> factory(tmp_path) that returns a fresh,
empty store (e.g. an etcd one that starts a real etcd and uses a unique key prefix), and
add the name to the `store` fixture's params (mark it as needed, e.g. pytest.mark.client).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from muslin.model.errors import Conflict, NotFound, Unavailable
from muslin.store import open_store
from muslin.store.base import Compare, Delete, Put
from muslin.store.memory import MemoryStore
from muslin.store.sqlite import SqliteStore

def _etcd_store(tmp: Path) -> Any:
    """One real etcd for the whole run (free loopback ports, stopped by PID at exit);
    each test gets a unique key prefix, so it sees an empty store."""
    import atexit
    import secrets
    from etcdutil import EtcdServer
    from muslin.store.etcd import EtcdStore
    global _ETCD
    if _ETCD is None:
        _ETCD = EtcdServer().start()
        atexit.register(_ETCD.destroy)
    return EtcdStore([_ETCD.endpoint], prefix=f"contract-{secrets.token_hex(4)}/")


_ETCD = None
_ETCD_TLS: Any = None


def _etcd_tls_store(tmp: Path) -> Any:
    """The same over https with a client certificate and user/password authentication (one
    etcd with --client-cert-auth and auth enabled, certificates made with openssl)."""
    import atexit
    import secrets
    import shutil
    import tempfile
    from etcdutil import Certs, EtcdServer
    from muslin.store.base import EtcdOptions
    from muslin.store.etcd import EtcdStore
    global _ETCD_TLS
    if _ETCD_TLS is None:
        d = tempfile.mkdtemp(prefix="muslin-etcd-certs-")
        certs = Certs(d)
        srv = EtcdServer(certs=certs, auth=("muslin", "pw-" + secrets.token_hex(4))).start()
        _ETCD_TLS = (srv, certs)
        atexit.register(lambda: (srv.destroy(), shutil.rmtree(d, ignore_errors=True)))
    srv, certs = _ETCD_TLS
    opts = EtcdOptions(ca=certs.ca, cert=certs.client, key=certs.client_key, user=srv.auth[0], password=srv.auth[1])
    return EtcdStore([srv.endpoint], prefix=f"contract-{secrets.token_hex(4)}/", options=opts, tls=True)


BACKENDS: dict[str, Callable[[Path], Any]] = {
    "memory": lambda tmp: MemoryStore(),
    "sqlite": lambda tmp: SqliteStore(tmp / "store.db"),
    "etcd": _etcd_store,
    "etcd-tls": _etcd_tls_store,
}

LEASE_TTL = 1.0


@pytest.fixture(params=["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.client),
                        pytest.param("etcd-tls", marks=pytest.mark.client)])
def store(request, tmp_path):
    s = BACKENDS[request.param](tmp_path)
    try:
        yield s
    finally:
        s.close()


def wait_until(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


# --- basic key-value ---------------------------------------------------------------------

def test_get_missing(store):
    assert store.get("nope") is None


def test_put_get_revisions(store):
    r0 = store.revision()
    r1 = store.put("a/x", {"v": 1, "l": [1, "two"]})
    assert r1 > r0 and store.revision() == r1
    kv = store.get("a/x")
    assert kv.key == "a/x" and kv.value == {"v": 1, "l": [1, "two"]}
    assert kv.create_revision == r1 and kv.mod_revision == r1
    r2 = store.put("a/x", "second")
    kv = store.get("a/x")
    assert r2 > r1 and kv.value == "second" and kv.create_revision == r1 and kv.mod_revision == r2


def test_returned_values_are_copies(store):
    store.put("k", {"l": [1]})
    v = store.get("k").value
    v["l"].append(2)
    assert store.get("k").value == {"l": [1]}


def test_cas_create_only(store):
    store.put("k", 1, expect=0)
    with pytest.raises(Conflict):
        store.put("k", 2, expect=0)
    assert store.get("k").value == 1


def test_cas_on_revision(store):
    rev = store.put("k", 1)
    rev2 = store.put("k", 2, expect=rev)
    assert store.get("k").value == 2
    before = store.revision()
    with pytest.raises(Conflict):
        store.put("k", 3, expect=rev)  # stale
    assert store.get("k").value == 2 and store.get("k").mod_revision == rev2
    assert store.revision() == before
    with pytest.raises(Conflict):
        store.put("missing", 1, expect=rev)


def test_delete(store):
    assert store.delete("k") is False
    rev = store.put("k", 1)
    with pytest.raises(Conflict):
        store.delete("k", expect=rev + 100)
    assert store.get("k") is not None
    assert store.delete("k", expect=rev) is True
    assert store.get("k") is None
    assert store.delete("k") is False


def test_delete_prefix_and_list_sorted(store):
    for k in ["n/b", "n/a", "n/c/d", "m/x", "n", "nx/y"]:
        store.put(k, k)
    assert [kv.key for kv in store.list("n/")] == ["n/a", "n/b", "n/c/d"]
    assert [kv.key for kv in store.list("")] == sorted(["n/b", "n/a", "n/c/d", "m/x", "n", "nx/y"])
    assert [kv.value for kv in store.list("n/c/")] == ["n/c/d"]
    assert store.delete_prefix("n/") == 3
    assert [kv.key for kv in store.list("")] == ["m/x", "n", "nx/y"]
    assert store.delete_prefix("zzz/") == 0


def test_unicode_and_odd_keys(store):
    store.put("u/é/ü", "x")
    store.put("u/\U0001f600", "y")
    store.put("u0", "z")
    assert [kv.key for kv in store.list("u/")] == ["u/é/ü", "u/\U0001f600"]


def test_revision_monotonic(store):
    revs = [store.put(f"k{i}", i) for i in range(5)]
    revs.append(store.txn([], [Put("t1", 1), Put("t2", 2)]))
    store.delete("k0")
    revs.append(store.revision())
    assert revs == sorted(revs) and len(set(revs)) == len(revs)
    # a txn is ONE revision for all its keys
    assert store.get("t1").mod_revision == store.get("t2").mod_revision


# --- transactions ------------------------------------------------------------------------

def test_txn_all_or_nothing(store):
    r_a = store.put("a", 1)
    store.put("b", 1)
    rev = store.txn([Compare("a", r_a), Compare("c", 0)], [Put("a", 2), Put("c", 3), Delete("b")])
    assert store.get("a").value == 2 and store.get("c").value == 3 and store.get("b") is None
    assert store.get("a").mod_revision == rev == store.get("c").mod_revision
    before = store.revision()
    with pytest.raises(Conflict):
        store.txn([Compare("a", rev), Compare("c", r_a)], [Put("a", 99), Put("new", 1), Delete("c")])
    assert store.get("a").value == 2 and store.get("new") is None and store.get("c").value == 3
    assert store.revision() == before


def test_txn_delete_prefix(store):
    for k in ["p/1", "p/2", "q/1"]:
        store.put(k, 0)
    store.txn([], [Delete("p/", prefix=True), Put("q/2", 1)])
    assert [kv.key for kv in store.list("")] == ["q/1", "q/2"]


def test_txn_with_bad_lease_changes_nothing(store):
    store.put("a", 1)
    with pytest.raises(NotFound):
        store.txn([], [Put("a", 2), Put("b", 1, lease=987654)])
    assert store.get("a").value == 1 and store.get("b") is None


# --- watch -------------------------------------------------------------------------------

def test_watch_history_in_order(store):
    start = store.revision() + 1
    store.put("w/a", 1)
    store.put("x/other", 1)
    store.put("w/b", 2)
    store.delete("w/a")
    store.txn([], [Put("w/c", 3), Delete("w/b")])
    evs = list(store.watch("w/", start, timeout=0.3))
    assert [(e.type, e.key, e.value) for e in evs] == [
        ("put", "w/a", 1), ("put", "w/b", 2), ("delete", "w/a", None),
        ("put", "w/c", 3), ("delete", "w/b", None)]
    revs = [e.revision for e in evs]
    assert revs == sorted(revs) and revs[-1] == revs[-2] == store.revision()


def test_watch_resume_from_later_revision(store):
    start = store.revision() + 1
    for i in range(6):
        store.put(f"w/{i}", i)
    evs = list(store.watch("w/", start, timeout=0.2))
    resume = evs[2].revision + 1
    store.put("w/late", "x")
    evs2 = list(store.watch("w/", resume, timeout=0.2))
    assert [e.key for e in evs2] == ["w/3", "w/4", "w/5", "w/late"]


def test_watch_blocks_for_new_events_and_times_out(store):
    start = store.revision() + 1
    got = []

    def writer():
        time.sleep(0.2)
        store.put("live/a", 1)
        time.sleep(0.1)
        store.delete("live/a")

    t = threading.Thread(target=writer)
    t.start()
    t0 = time.monotonic()
    for e in store.watch("live/", start, timeout=1.0):
        got.append((e.type, e.key))
    t.join()
    assert got == [("put", "live/a"), ("delete", "live/a")]
    assert time.monotonic() - t0 < 5


def test_watch_stops_on_close(store):
    start = store.revision() + 1
    result = []

    def reader():
        result.extend(store.watch("nothing/", start, timeout=None))
        result.append("done")

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.2)
    store.close()
    t.join(5)
    assert result == ["done"]


# --- leases ------------------------------------------------------------------------------

def test_lease_expiry_deletes_keys_with_events(store):
    lease = store.grant_lease(LEASE_TTL)
    store.put("l/a", 1, lease=lease)
    store.put("l/b", 2, lease=lease)
    store.put("l/keep", 3)
    start = store.revision() + 1
    assert store.get("l/a").lease == lease
    assert wait_until(lambda: store.get("l/a") is None, LEASE_TTL + 4)
    assert store.get("l/b") is None and store.get("l/keep").value == 3
    evs = list(store.watch("l/", start, timeout=0.2))
    assert sorted((e.type, e.key) for e in evs) == [("delete", "l/a"), ("delete", "l/b")]
    with pytest.raises(NotFound):
        store.refresh_lease(lease)


def test_lease_refresh_keeps_keys(store):
    lease = store.grant_lease(LEASE_TTL)
    store.put("r/a", 1, lease=lease)
    end = time.monotonic() + LEASE_TTL * 2
    while time.monotonic() < end:
        store.refresh_lease(lease)
        time.sleep(LEASE_TTL / 4)
    assert store.get("r/a").value == 1


def test_lease_revoke(store):
    lease = store.grant_lease(60)
    store.put("v/a", 1, lease=lease)
    start = store.revision() + 1
    store.revoke_lease(lease)
    assert store.get("v/a") is None
    evs = list(store.watch("v/", start, timeout=0.2))
    assert [(e.type, e.key) for e in evs] == [("delete", "v/a")]
    with pytest.raises(NotFound):
        store.put("v/b", 1, lease=lease)


def test_lease_expiry_visible_to_watchers(store):
    lease = store.grant_lease(LEASE_TTL)
    store.put("e/a", 1, lease=lease)
    start = store.revision() + 1
    evs = []
    for e in store.watch("e/", start, timeout=LEASE_TTL + 3):
        evs.append((e.type, e.key))
        break
    assert evs == [("delete", "e/a")]


# --- backend specifics (memory and sqlite only) -------------------------------------------

@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_watch_from_compacted_revision_raises(backend, tmp_path):
    s = MemoryStore(history=10) if backend == "memory" else SqliteStore(tmp_path / "h.db", history=10)
    try:
        for i in range(60):
            s.put("h/k", i)
        with pytest.raises(Unavailable, match="compacted"):
            next(iter(s.watch("h/", 1, timeout=0.1)))
        evs = list(s.watch("h/", s.revision() - 4, timeout=0.1))
        assert [e.value for e in evs] == [55, 56, 57, 58, 59]
    finally:
        s.close()


def test_sqlite_persists_across_opens(tmp_path):
    p = tmp_path / "p.db"
    s = SqliteStore(p)
    rev = s.put("k", {"a": 1})
    s.close()
    s2 = SqliteStore(p)
    assert s2.get("k").value == {"a": 1} and s2.revision() == rev
    assert oct(p.stat().st_mode & 0o777) == oct(0o600)
    s2.close()


def test_open_store_forms(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSLIN_STATE_DIR", str(tmp_path / "state"))
    s = open_store()
    assert isinstance(s, SqliteStore) and s.path == str(tmp_path / "state" / "muslin.db")
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    s.close()
    s = open_store(tmp_path / "dir2")
    assert s.path == str(tmp_path / "dir2" / "muslin.db")
    s.close()
    s = open_store(str(tmp_path / "x" / "file.db"))
    assert s.path == str(tmp_path / "x" / "file.db")
    s.close()
    assert isinstance(open_store("memory://"), MemoryStore)
    from muslin.model.errors import Invalid
    with pytest.raises(Invalid):
        open_store("etcd://")
    with pytest.raises(Invalid):
        open_store("ftp://x")


def test_open_store_does_not_import_etcd():
    code = "import sys, muslin.store; muslin.store.open_store('memory://'); print('etcd3gw' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


COUNTER = textwrap.dedent("""
    import sys
    from muslin.model.errors import Conflict
    from muslin.store.sqlite import SqliteStore
    s = SqliteStore(sys.argv[1])
    done = 0
    while done < int(sys.argv[2]):
        kv = s.get("counter")
        try:
            s.put("counter", (kv.value if kv else 0) + 1, expect=kv.mod_revision if kv else 0)
            done += 1
        except Conflict:
            pass
    s.close()
""")


def test_sqlite_multiprocess_cas_counter(tmp_path):
    db = tmp_path / "c.db"
    SqliteStore(db).close()
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, str(db), "50"],
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    s = SqliteStore(db)
    assert s.get("counter").value == 400
    s.close()

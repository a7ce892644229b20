"""Long-lived watches on a real etcd 3.4: one stream for as long as nothing breaks; after an
etcd restart the same watch goes on from its next revision and misses no event; after a
gap (history compacted while the watch was cut off) the cache lists once and watches again."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from etcdutil import EtcdServer, free_port
from muslin.store.cache import WatchCache
from muslin.store.etcd import EtcdStore

pytestmark = pytest.mark.client


@pytest.fixture
def etcd():
    srv = EtcdServer().start()
    try:
        yield srv
    finally:
        srv.destroy()


class Proxy:
    """A TCP proxy on loopback that can be cut (every connection dropped, new ones refused)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(64)
        self.open = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:  # against cut(): a connection is either cut with the others or refused
                if not self.open:
                    c.close()
                    continue
                try:
                    up = socket.create_connection(self.target, timeout=5)
                except OSError:
                    c.close()
                    continue
                self.conns += [c, up]
            for a, b in ((c, up), (up, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self.lock:
            self.open = False
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.lsock.close()


def poll_until(cache: WatchCache, n: int, timeout: float = 20) -> list:
    got: list = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        got += cache.poll(0.5)
    return got


def test_watch_survives_an_etcd_restart_without_missing_an_event(etcd):
    s, writer = EtcdStore([etcd.endpoint]), EtcdStore([etcd.endpoint])
    c = WatchCache(s, "w/")
    try:
        c.load()
        for i in range(3):
            writer.put(f"w/{i}", i)
        got = poll_until(c, 3)
        etcd.stop()
        time.sleep(0.5)
        etcd.start()
        for i in range(3, 8):
            writer.put(f"w/{i}", i)
        writer.delete("w/0")
        got += poll_until(c, 6)
        assert [(x.key, x.new) for x in got] == [(f"w/{i}", i) for i in range(8)] + [("w/0", None)]
        assert c.lists == 1 and c.gaps == 0  # the same watch went on: no list again
        assert s.stats["watch_streams"] == 2  # the first stream and one reopened after the restart
    finally:
        c.close()
        s.close()
        writer.close()


def test_a_gap_while_cut_off_lists_once_then_watches_again(etcd):
    proxy = Proxy(("127.0.0.1", etcd.port))
    s, writer = EtcdStore([proxy.endpoint]), EtcdStore([etcd.endpoint])
    c = WatchCache(s, "g/")
    try:
        writer.put("g/keep", 1)
        writer.put("g/gone", 2)
        c.load()
        proxy.cut()  # the watch stream drops, and cannot come back for now
        writer.put("g/new", 3)
        writer.delete("g/gone")
        writer.put("g/keep", 10)
        writer.compact(writer.revision())  # the history the watch would resume from is gone
        proxy.restore()
        got = poll_until(c, 3)
        assert sorted((x.key, x.old, x.new) for x in got) == [("g/gone", 2, None), ("g/keep", 1, 10), ("g/new", None, 3)]
        assert c.gaps == 1 and c.lists == 2
        writer.put("g/after", 4)
        assert [(x.key, x.new) for x in poll_until(c, 1)] == [("g/after", 4)]
        assert c.lists == 2 and c.items == {"g/keep": 10, "g/new": 3, "g/after": 4}
    finally:
        c.close()
        s.close()
        writer.close()
        proxy.close()


def test_an_idle_watch_is_one_stream_and_calls_reuse_one_connection(etcd):
    s = EtcdStore([etcd.endpoint])
    c = WatchCache(s, "i/")
    try:
        c.load()
        lease = s.grant_lease(30)
        for _ in range(20):  # an agent's idle life: polls that time out, lease renewals
            assert c.poll(0.1) == []
            s.refresh_lease(lease)
        assert s.stats["watch_streams"] == 1 and c.lists == 1
        assert s.stats["connections"] <= 3, s.stats  # the stream, and calls on one kept-alive connection
    finally:
        c.close()
        s.close()

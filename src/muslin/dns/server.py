"""muslind's DNS server: UDP and TCP on port 53 of each bridge network's gateway (asyncio).

One event loop on one thread owns the name table and the sockets. Other threads change
them only through `call(fn)` (the feed from the store: endpoints and networks come and go),
and after each change the listeners follow the networks: a socket is bound on each new
gateway address (IP_FREEBIND: an address still tentative binds too) and closed when its
network goes.

`stop()` first stops reading, lets the queries already read finish (forwards included,
up to DRAIN seconds), then returns the listening sockets, open: muslind hands them to a
holder process (dns/handover.py) that keeps them, and so the datagrams and connections the
kernel queues on them, until the next muslind takes them over. No query that arrived is
lost across a restart.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

from muslin import events
from muslin.dns import wire
from muslin.dns.answer import answer
from muslin.dns.records import NameTable, parse_ip
from muslin.dns.upstream import Upstreams
from muslin.model.types import IPAddress

log = logging.getLogger("muslin.dns")

IP_FREEBIND = 15
IPV6_FREEBIND = 78
DRAIN = 3.0  # seconds stop() waits for queries already read
TCP_IDLE = 10.0  # seconds a TCP connection may stay idle between queries
MAX_TCP = 256  # connections at once
MAX_INFLIGHT = 1024  # forwarded queries at once (more: REFUSED, as Docker does)


@dataclass
class Listener:
    addr: IPAddress
    proto: str  # "udp" or "tcp"
    sock: socket.socket
    network: str

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.addr), self.proto)


def bind_socket(addr: IPAddress, port: int, proto: str) -> socket.socket:
    fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    s = socket.socket(fam, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        if proto == "udp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((str(addr), port))
        if proto == "tcp":
            s.listen(128)
        s.setblocking(False)
        return s
    except BaseException:
        s.close()
        raise


class DnsServer:
    def __init__(self, port: int = 53, resolv_conf: str = "/etc/resolv.conf",
                 adopt: Callable[[], dict[tuple[str, str], socket.socket]] = dict) -> None:
        self.port = port
        self.table = NameTable()
        self.listeners: dict[tuple[str, str], Listener] = {}
        self.upstreams = Upstreams(resolv_conf, exclude=lambda ip: (str(ip), "udp") in self.listeners)
        self._adopt = adopt  # sockets handed over by a previous muslind: {(addr, proto): socket}
        self._adopted: dict[tuple[str, str], socket.socket] | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="dns", daemon=True)
        self.inflight: set[asyncio.Future] = set()
        self.tcp_conns = 0
        self.reading = True
        self.failed_binds: dict[tuple[str, str], str] = {}
        self.stats = {"local": 0, "forwarded": 0, "errors": 0}
        self.debug = log.isEnabledFor(logging.DEBUG)

    # -- threads ----------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run fn on the server's loop (thread-safe); returns a Future of its result."""
        fut: Future = Future()

        def go() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)
        self.loop.call_soon_threadsafe(go)
        return fut

    def change(self, fn: Callable[[NameTable], Any]) -> Future:
        """Change the table on the loop, then make the listeners follow its networks."""
        def go() -> None:
            fn(self.table)
            self.sync_listeners()
        return self.call(go)

    # -- listeners --------------------------------------------------------------------
    def sync_listeners(self) -> None:
        if not self.reading:
            return
        want = self.table.listen()
        for key in [k for k in self.listeners if parse_ip(k[0]) not in want]:
            self._close(self.listeners.pop(key))
        if self._adopted is None:
            try:
                self._adopted = self._adopt()
            except Exception as e:  # noqa: BLE001 - then bind our own
                log.warning("DNS: taking over sockets failed: %s", e)
                self._adopted = {}
            if self._adopted:
                log.info("DNS: took over %d sockets from the previous muslind", len(self._adopted))
        for addr, net in want.items():
            for proto in ("udp", "tcp"):
                key = (str(addr), proto)
                lst = self.listeners.get(key)
                if lst is not None:
                    lst.network = net
                    continue
                sock = self._adopted.pop(key, None)
                try:
                    sock = sock or bind_socket(addr, self.port, proto)
                except OSError as e:
                    if self.failed_binds.get(key) != e.strerror:
                        log.warning("DNS: cannot listen on %s port %d/%s: %s", addr, self.port, proto, e.strerror)
                    self.failed_binds[key] = e.strerror or str(e)
                    continue
                self.failed_binds.pop(key, None)
                lst = Listener(addr, proto, sock, net)
                self.listeners[key] = lst
                if proto == "udp":
                    self.loop.add_reader(sock, self._on_udp, lst)
                else:
                    self.loop.add_reader(sock, self._on_accept, lst)
                log.info("DNS: listening on %s port %d/%s for network %s", addr, self.port, proto, net)
        for key, sock in list(self._adopted.items()):  # handed over for a network gone meanwhile
            if parse_ip(key[0]) not in want:
                sock.close()
                del self._adopted[key]

    def _close(self, lst: Listener) -> None:
        try:
            self.loop.remove_reader(lst.sock)
        except (ValueError, OSError):
            pass
        lst.sock.close()
        log.info("DNS: closed %s port %d/%s (network %s is gone)", lst.addr, self.port, lst.proto, lst.network)

    # -- UDP ----------------------------------------------------------------------------
    def _on_udp(self, lst: Listener) -> None:
        for _ in range(64):
            try:
                data, peer = lst.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("DNS recv on %s: %s", lst.addr, e)
                return
            self._udp_query(lst, data, peer)

    def _udp_query(self, lst: Listener, data: bytes, peer: tuple) -> None:
        t0 = time.perf_counter()
        client = parse_ip(peer[0])
        if client is None:
            return
        try:
            q = wire.parse_query(data)
        except wire.WireError:
            self.stats["errors"] += 1
            out = wire.error_reply(data, wire.FORMERR)
            if out:
                self._sendto(lst, out, peer)
            return
        out = answer(self.table, q, lst.network, client)
        if self.debug:
            log.debug("DNS q %s %s type %d on %s: %s", peer[0], q.name, q.qtype, lst.network,
                      "forward" if out is None else f"rcode {wire.rcode_of(out)}, {len(out)} bytes")
        if out is not None:
            self.stats["local"] += 1
            self._sendto(lst, out, peer)
            _measured(q, out, t0, "local")
            return
        self._spawn(self._forward_udp(lst, q, data, peer, t0))

    def _sendto(self, lst: Listener, out: bytes, peer: tuple) -> None:
        try:
            lst.sock.sendto(out, peer)
        except OSError as e:
            log.debug("DNS send to %s: %s", peer[0], e)

    async def _forward_udp(self, lst: Listener, q: wire.Query, data: bytes, peer: tuple, t0: float = 0.0) -> None:
        out = await self._forward(q, data, tcp=False)
        self._sendto(lst, wire.truncate(out, q.max_udp()), peer)
        _measured(q, out, t0, "forwarded")

    async def _forward(self, q: wire.Query, data: bytes, tcp: bool) -> bytes:
        self.stats["forwarded"] += 1
        if len(self.inflight) > MAX_INFLIGHT:
            return wire.reply(q, wire.REFUSED, authoritative=False)
        try:
            out = await self.upstreams.ask(data, tcp)
        except Exception as e:  # noqa: BLE001 - never lose the client's answer
            log.warning("DNS forward: %s", e)
            out = None
        return out if out is not None else wire.reply(q, wire.SERVFAIL, authoritative=False)

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    # -- TCP ----------------------------------------------------------------------------
    def _on_accept(self, lst: Listener) -> None:
        for _ in range(16):
            try:
                conn, peer = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("DNS accept on %s: %s", lst.addr, e)
                return
            if self.tcp_conns >= MAX_TCP:
                conn.close()
                continue
            conn.setblocking(False)
            self._spawn(self._tcp_conn(lst, conn, peer))

    async def _tcp_conn(self, lst: Listener, conn: socket.socket, peer: tuple) -> None:
        self.tcp_conns += 1
        client = parse_ip(peer[0])
        try:
            while client is not None:
                try:
                    head = await asyncio.wait_for(self._recv(conn, 2), TCP_IDLE)
                except (asyncio.TimeoutError, ConnectionError, OSError):
                    return
                if not head:
                    return
                n = struct.unpack("!H", head)[0]
                try:
                    data = await asyncio.wait_for(self._recv(conn, n), TCP_IDLE)
                except (asyncio.TimeoutError, ConnectionError, OSError):
                    return
                try:
                    t0 = time.perf_counter()
                    q = wire.parse_query(data)
                    out = answer(self.table, q, lst.network, client, tcp=True)
                    if out is None:
                        out = await self._forward(q, data, tcp=True)
                        _measured(q, out, t0, "forwarded")
                    else:
                        self.stats["local"] += 1
                        _measured(q, out, t0, "local")
                except wire.WireError:
                    self.stats["errors"] += 1
                    out = wire.error_reply(data, wire.FORMERR)
                    if out is None:
                        return
                await self.loop.sock_sendall(conn, struct.pack("!H", len(out)) + out)
                if not self.reading:
                    return
        except OSError:
            return
        finally:
            self.tcp_conns -= 1
            conn.close()

    async def _recv(self, conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = await self.loop.sock_recv(conn, n - len(buf))
            if not chunk:
                if buf:
                    raise ConnectionResetError("short read")
                return b""
            buf += chunk
        return buf

    # -- stopping -----------------------------------------------------------------------
    def stop(self) -> dict[tuple[str, str], socket.socket]:
        """Stop reading, finish what was read, stop the loop; returns the open listening
        sockets {(address, proto): socket} for the next muslind (the caller closes them)."""
        if not self.thread.is_alive():
            return {}

        def pause() -> None:
            self.reading = False
            for lst in self.listeners.values():
                try:
                    self.loop.remove_reader(lst.sock)
                except (ValueError, OSError):
                    pass
        self.call(pause).result(5)
        end = time.monotonic() + DRAIN
        while time.monotonic() < end and self.call(lambda: len(self.inflight)).result(5):
            time.sleep(0.02)
        socks = {k: lst.sock for k, lst in self.listeners.items()}
        self.listeners.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        for sock in (self._adopted or {}).values():
            sock.close()
        return socks

    def status(self) -> dict[str, Any]:
        return {"listening": sorted(f"{a}:{self.port}/{p}" for a, p in self.listeners),
                "endpoints": len(self.table.endpoints), "failed": dict(self.failed_binds), **self.stats}


QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 65: "HTTPS"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _measured(q: wire.Query, out: bytes, t0: float, answered: str) -> None:
    """muslind's metrics (muslin/events.py): one event per answered query."""
    if events.LISTENERS and t0:
        rc = wire.rcode_of(out)
        events.emit("dns_query", qtype=QTYPES.get(q.qtype, str(q.qtype)), rcode=RCODES.get(rc, str(rc)),
                    seconds=time.perf_counter() - t0, answered=answered)

"""The host's upstream resolvers: read from a resolv.conf, asked in turn (I/O, asyncio).

At most 3 servers (resolv.conf's limit), in file order; a server that timed out, refused or
failed goes to the back for a while, so a dead first server costs one timeout, not one per
query. A query moves on to the next server on SERVFAIL, REFUSED, an error or a timeout
(TRY_TIMEOUT each, so an answer comes within 2 s when the first server is dead). The
sockets are opened by muslind in the host namespace: a loopback server (127.0.0.53) works.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass

from muslin.dns import wire
from muslin.dns.records import parse_ip
from muslin.model.types import IPAddress

log = logging.getLogger("muslin.dns")

MAX_SERVERS = 3
TRY_TIMEOUT = 0.8  # seconds per server and try
PENALTY = 30.0  # seconds a failing server is asked last
RELOAD_EVERY = 1.0  # seconds between checks of the file


def parse_resolv_conf(text: str) -> list[str]:
    """The nameserver addresses of a resolv.conf, in order, at most 3 (IPv6 zones kept)."""
    out: list[str] = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0] == "nameserver" and parse_ip(f[1]) is not None and f[1] not in out:
            out.append(f[1])
    return out[:MAX_SERVERS]


@dataclass
class Server:
    text: str  # as written ('fe80::1%eth0' keeps its zone)
    ip: IPAddress
    bad_until: float = 0.0

    def sockaddr(self, port: int) -> tuple:
        if self.ip.version == 4:
            return (str(self.ip), port)
        return socket.getaddrinfo(self.text, port, socket.AF_INET6, socket.SOCK_DGRAM)[0][4]


class Upstreams:
    def __init__(self, path: str, port: int = 53, exclude: callable = lambda ip: False) -> None:  # type: ignore[valid-type]
        self.path = path
        self.port = port
        self.exclude = exclude  # our own listen addresses: never forward to ourselves
        self.servers: list[Server] = []
        self._stamp: tuple | None = None
        self._checked = 0.0

    def current(self) -> list[Server]:
        now = time.monotonic()
        if now - self._checked >= RELOAD_EVERY:
            self._checked = now
            self.reload()
        return [s for s in self.servers if not self.exclude(s.ip)]

    def reload(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
            stamp: tuple | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp and not force:
            return
        self._stamp = stamp
        try:
            with open(self.path) as f:
                names = parse_resolv_conf(f.read())
        except OSError:
            names = []
        old = {s.text: s for s in self.servers}
        self.servers = [old.get(n) or Server(n, parse_ip(n)) for n in names]  # type: ignore[arg-type]
        log.info("upstream DNS servers from %s: %s", self.path, ", ".join(names) or "none")

    def order(self) -> list[Server]:
        now = time.monotonic()
        servers = self.current()
        return [s for s in servers if s.bad_until <= now] + [s for s in servers if s.bad_until > now]

    async def ask(self, query: bytes, tcp: bool) -> bytes | None:
        """The first usable answer (not SERVFAIL/REFUSED), else the last one, else None."""
        last: bytes | None = None
        for srv in self.order():
            try:
                reply = await asyncio.wait_for(self._exchange(srv, query, tcp), TRY_TIMEOUT * (2 if tcp else 1))
            except (OSError, asyncio.TimeoutError, wire.WireError) as e:
                srv.bad_until = time.monotonic() + PENALTY
                log.debug("upstream %s: %s", srv.text, type(e).__name__)
                continue
            if wire.rcode_of(reply) in (wire.SERVFAIL, wire.REFUSED):
                srv.bad_until = time.monotonic() + PENALTY
                last = reply
                continue
            srv.bad_until = 0.0
            return reply
        return last

    async def _exchange(self, srv: Server, query: bytes, tcp: bool) -> bytes:
        loop = asyncio.get_running_loop()
        fam = socket.AF_INET if srv.ip.version == 4 else socket.AF_INET6
        sock = socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, srv.sockaddr(self.port))
            qid = wire.header_id(query)
            if tcp:
                await loop.sock_sendall(sock, struct.pack("!H", len(query)) + query)
                head = await _recv_exactly(loop, sock, 2)
                data = await _recv_exactly(loop, sock, struct.unpack("!H", head)[0])
                if wire.header_id(data) != qid:
                    raise wire.WireError("answer for another query")
                return data
            await loop.sock_sendall(sock, query)
            while True:  # a connected socket: only that server's datagrams arrive
                data = await loop.sock_recv(sock, 65535)
                if wire.header_id(data) == qid and len(data) >= 12:
                    return data
        finally:
            sock.close()


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise ConnectionResetError("connection closed")
        buf += chunk
    return buf

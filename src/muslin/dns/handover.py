"""Keeping DNS sockets open across a muslind restart (the aardvark-dns#389 trap).

A stopping muslind hands its DNS listening sockets to a holder: a small process
(`python -m muslin.dns.handover`) that keeps them open, so the kernel keeps queueing the
queries that arrive (datagrams in the socket buffer, connections in the backlog), and waits
on an abstract Unix socket for the next muslind, which takes them over (SCM_RIGHTS) and
answers what queued. A holder nobody asks within HOLD seconds closes them and exits.

The abstract socket name belongs to the network namespace (it dies with it), and carries the
state dir's id: one holder per host namespace and state dir.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

HOLD = 60.0  # seconds a holder waits for the next muslind
MAX_FDS = 250  # SCM_RIGHTS carries at most 253 descriptors per message


def address(owner_id: str) -> str:
    return f"\0muslin-dns-{owner_id}"


def take(owner_id: str, timeout: float = 2.0) -> dict[tuple[str, str], socket.socket]:
    """The sockets a holder keeps for this state dir ({} when there is none)."""
    out: dict[tuple[str, str], socket.socket] = {}
    while True:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(timeout)
        try:
            c.connect(address(owner_id))
        except OSError:
            c.close()
            return out
        try:
            with c:
                msg, fds, _flags, _addr = socket.recv_fds(c, 1 << 20, MAX_FDS)
                keys = json.loads(msg.decode() or "[]")
        except (OSError, ValueError):
            return out
        for (addr, proto), fd in zip(keys, fds):
            s = socket.socket(fileno=fd)
            s.setblocking(False)
            out[(addr, proto)] = s
        for fd in fds[len(keys):]:
            os.close(fd)
        if len(keys) < MAX_FDS:
            return out  # else: the holder has another batch for us


def hold(owner_id: str, socks: dict[tuple[str, str], socket.socket], timeout: float = HOLD) -> int:
    """Start a holder for `socks` and wait until it has them; returns its PID (0: nothing to
    hold, or it could not start: then the sockets close with this process)."""
    if not socks:
        return 0
    keys = list(socks)
    fds = [socks[k].fileno() for k in keys]
    r, w = os.pipe()
    try:
        p = subprocess.Popen([sys.executable, "-m", "muslin.dns.handover", owner_id, str(timeout), str(w),
                              json.dumps([[k[0], k[1], fd] for k, fd in zip(keys, fds)])],
                             pass_fds=[*fds, w], stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        os.close(r)
        os.close(w)
        return 0
    os.close(w)
    with os.fdopen(r) as f:
        ready = f.readline().strip()  # the holder writes its answer (or dies: EOF)
    return p.pid if ready == "ready" else 0


def _serve(owner_id: str, timeout: float, ready_fd: int, spec: str) -> int:
    entries = json.loads(spec)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(address(owner_id))
    except OSError:
        os.write(ready_fd, b"busy\n")  # another holder keeps this state dir's sockets
        return 1
    srv.listen(4)
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    end = time.monotonic() + timeout
    pending = entries
    while pending:
        left = end - time.monotonic()
        if left <= 0:
            return 0  # nobody came: the sockets close with us
        srv.settimeout(left)
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            return 0
        except OSError:
            continue
        batch, pending = pending[:MAX_FDS], pending[MAX_FDS:]
        try:
            with conn:
                socket.send_fds(conn, [json.dumps([[a, p] for a, p, _ in batch]).encode()],
                                [fd for _, _, fd in batch])
        except OSError:
            pending = batch + pending  # that muslind went away: keep them for the next one
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))

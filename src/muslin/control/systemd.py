"""systemd's side of muslind, without libsystemd: sd_notify, socket activation, and the
probes that tell READY only when the sockets answer.

- `notify("READY=1", ...)`: a datagram to $NOTIFY_SOCKET (a path, or '@' for an abstract
  name); nothing when muslind does not run under a Type=notify manager.
- `listen_fds()`: the sockets systemd passed (LISTEN_PID = us, LISTEN_FDS from fd 3),
  by the path they are bound to; the LISTEN_* variables are removed so no child sees them.
- `probe_agent(path)`, `probe_docker(path)`: one real request each (CNI VERSION through
  the agent socket's framing 1, Docker's Plugin.Activate), so READY means served.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from typing import Callable

from muslin.model.errors import Unavailable

LISTEN_FDS_START = 3


def notify(*lines: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(lines).encode(), addr)
        return True
    except OSError:
        return False


def listen_fds(unset: bool = True) -> dict[str, socket.socket]:
    """{bound path (or name from LISTEN_FDNAMES): listening socket} passed by systemd."""
    env = os.environ
    try:
        pid, n = int(env.get("LISTEN_PID", "0")), int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        pid, n = 0, 0
    names = env.get("LISTEN_FDNAMES", "").split(":")
    if unset:
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(k, None)
    if pid != os.getpid() or n <= 0:
        return {}
    out: dict[str, socket.socket] = {}
    for i in range(n):
        fd = LISTEN_FDS_START + i
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            continue
        os.set_inheritable(fd, False)
        where = s.getsockname() if s.family == socket.AF_UNIX else ""
        key = where if isinstance(where, str) and where else (names[i] if i < len(names) else str(fd))
        out[key] = s
    return out


class Unix(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def probe_agent(path: str, timeout: float = 5.0) -> None:
    """A CNI VERSION request through the agent socket; OSError/ValueError when it is not served."""
    req = {"plugin": "cni", "env": {"CNI_COMMAND": "VERSION"}, "stdin": json.dumps({"cniVersion": "1.0.0"})}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    answer = json.loads(buf)
    if "supportedVersions" not in json.loads(answer["stdout"]):
        raise ValueError(f"unexpected answer {answer!r}")


def probe_docker(path: str, timeout: float = 5.0) -> None:
    """Docker's handshake (Plugin.Activate) on the plugin socket."""
    c = Unix(path, timeout)
    try:
        c.request("POST", "/Plugin.Activate", body=b"")
        r = c.getresponse()
        body = json.loads(r.read())
        if r.status != 200 or "NetworkDriver" not in body.get("Implements", []):
            raise ValueError(f"unexpected answer {r.status} {body!r}")
    finally:
        c.close()


def wait_answering(probes: list[tuple[str, Callable[[], None]]], timeout: float = 20.0) -> None:
    """Call each probe until it passes; Unavailable naming the socket when one does not in time."""
    for what, probe in probes:
        end = time.monotonic() + timeout
        while True:
            try:
                probe()
                break
            except (OSError, ValueError, KeyError, http.client.HTTPException) as e:
                if time.monotonic() > end:
                    raise Unavailable(f"{what} does not answer: {e}") from None
                time.sleep(0.05)

"""Run a function inside another network namespace, in a short-lived child process.

The caller never switches its own namespace (design principle 6): the child forks,
joins the namespace with setns(2), runs the function, sends back its result (or the
error) through a pipe and exits.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import struct
from typing import Any, Callable

from muslin.model.errors import MuslinError, NotFound, Unavailable

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_exists(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    os.close(fd)
    return True


def run_in_netns(path: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call fn(*args) inside the network namespace at `path`; return its result.

    MuslinErrors raised by fn are re-raised here unchanged; other exceptions become
    Unavailable with a one-line message.
    """
    try:
        nsfd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NotFound(f"network namespace {path} does not exist") from None
    except OSError as e:
        raise Unavailable(f"cannot open network namespace {path}: {e.strerror}") from None
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        code = 0
        try:
            setns(nsfd)
            payload = (True, fn(*args))
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            code = 1
            payload = (False, e if isinstance(e, MuslinError) else Unavailable(f"{path}: {type(e).__name__}: {e}"))
        try:
            data = pickle.dumps(payload)
        except Exception as e:  # noqa: BLE001
            data = pickle.dumps((False, Unavailable(f"{path}: unpicklable result: {e}")))
        with os.fdopen(wfd, "wb") as w:
            w.write(struct.pack("!I", len(data)) + data)
        os._exit(code)
    os.close(wfd)
    os.close(nsfd)
    with os.fdopen(rfd, "rb") as r:
        raw = r.read()
    os.waitpid(pid, 0)
    if len(raw) < 4:
        raise Unavailable(f"helper process in {path} died without an answer")
    ok, value = pickle.loads(raw[4:])
    if ok:
        return value
    raise value

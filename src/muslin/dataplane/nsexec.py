"""Run a function inside another network namespace, in a short-lived child process.

The caller never switches its own namespace (design principle 6): the child forks,
joins the namespace with setns(2), runs the function, sends back its result (or the
error) through a pipe and exits.

A long-lived process (muslind) calls `use_helper()` instead: the functions then run in
ONE persistent helper process (`python -m muslin.dataplane.nsexec`, started on first use)
that joins the namespace, runs the function and returns to its own namespace before the
next request, so the daemon pays neither a fork nor pyroute2's set-up per call and never
switches namespace itself.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import struct
import subprocess
import sys
import threading
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


def open_netns(path: str, what: str = "network namespace") -> int:
    """A file descriptor of the namespace at `path` (NotFound / Unavailable, one line)."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist") from None
    except OSError as e:
        raise Unavailable(f"cannot open {what} {path}: {e.strerror}") from None


def run_in_netns(path: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call fn(*args) inside the network namespace at `path`; return its result.

    MuslinErrors raised by fn are re-raised here unchanged; other exceptions become
    Unavailable with a one-line message.
    """
    nsfd = open_netns(path)
    if _helper_wanted:
        os.close(nsfd)
        return _helper_call(path, fn, args)
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


# -- the persistent helper (for muslind) ----------------------------------------------

_helper_wanted = False
_helper: subprocess.Popen | None = None
_helper_lock = threading.Lock()


def use_helper(on: bool = True) -> None:
    """Run every later `run_in_netns` in the persistent helper process (off: fork per call)."""
    global _helper_wanted
    _helper_wanted = on
    if not on:
        stop_helper()


def stop_helper() -> None:
    global _helper
    with _helper_lock:
        h, _helper = _helper, None
    if h is not None:
        try:
            h.stdin.close()  # type: ignore[union-attr]
            h.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            h.kill()
            h.wait()


def _frame(payload: Any) -> bytes:
    data = pickle.dumps(payload)
    return struct.pack("!I", len(data)) + data


def _read_frame(f: Any) -> Any | None:
    head = f.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack("!I", head)
    data = f.read(n)
    return pickle.loads(data) if len(data) == n else None


def _helper_call(path: str, fn: Callable[..., Any], args: tuple) -> Any:
    global _helper
    try:
        req = _frame((path, fn, args))
    except Exception:  # noqa: BLE001 - not picklable (e.g. a local function): fork instead
        return _fork_call(path, fn, args)
    with _helper_lock:
        if _helper is None or _helper.poll() is not None:
            _helper = subprocess.Popen([sys.executable, "-m", "muslin.dataplane.nsexec"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, close_fds=True)
        h = _helper
        try:
            h.stdin.write(req)  # type: ignore[union-attr]
            h.stdin.flush()  # type: ignore[union-attr]
            ans = _read_frame(h.stdout)
        except OSError:
            ans = None
        if ans is None:
            _helper = None
            h.kill()
            h.wait()
            raise Unavailable(f"netns helper process died while working in {path}")
    ok, value = ans
    if ok:
        return value
    raise value


def _fork_call(path: str, fn: Callable[..., Any], args: tuple) -> Any:
    global _helper_wanted
    saved, _helper_wanted = _helper_wanted, False
    try:
        return run_in_netns(path, fn, *args)
    finally:
        _helper_wanted = saved


def _serve() -> None:
    """The helper's loop: (path, fn, args) in, (ok, value) out, one frame each; always
    back in its own namespace before answering. Exits on EOF."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    rf, wf = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the pipe
    while True:
        try:
            req = _read_frame(rf)
        except Exception as e:  # noqa: BLE001
            wf.write(_frame((False, Unavailable(f"netns helper: bad request: {e}"))))
            wf.flush()
            continue
        if req is None:
            return
        path, fn, args = req
        try:
            nsfd = os.open(path, os.O_RDONLY)
        except OSError as e:
            payload: tuple = (False, NotFound(f"network namespace {path} does not exist") if e.errno == 2
                              else Unavailable(f"cannot open network namespace {path}: {e.strerror}"))
        else:
            try:
                setns(nsfd)
                payload = (True, fn(*args))
            except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
                payload = (False, e if isinstance(e, MuslinError) else Unavailable(f"{path}: {type(e).__name__}: {e}"))
            finally:
                os.close(nsfd)
                try:
                    setns(home)
                except OSError:
                    os._exit(3)  # never serve a request from the wrong namespace
        try:
            data = _frame(payload)
        except Exception as e:  # noqa: BLE001
            data = _frame((False, Unavailable(f"{path}: unpicklable result: {e}")))
        wf.write(data)
        wf.flush()


if __name__ == "__main__":
    _serve()

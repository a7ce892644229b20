"""Run a function inside another network namespace, in a short-lived child process.

The caller never switches its own namespace (design principle 6): the child forks,
joins the namespace with setns(2), runs the function, sends back its result (or the
error) through a pipe and exits.

A long-lived process (muslind) calls `use_helper()` instead: the functions then run in
ONE persistent helper process (`python -m muslin.dataplane.nsexec FD`, started with it)
that joins the namespace, runs the function and returns to its own namespace before the
next request, so the daemon pays no fork per call and never switches namespace itself.
The hot path asks the helper only for a netlink socket in the namespace
(`netlink_socket`), passed back over a Unix socket, and does the work itself over it.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import socket
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


# -- a netlink socket inside another namespace ----------------------------------------

def _socket_here() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)


def netlink_socket(path: str) -> int:
    """The fd of a NETLINK_ROUTE socket bound to the namespace at `path`. Work inside a
    sandbox then runs in this process, over that socket, with no fork and no pickling.

    muslind gets it from its persistent helper (passed over a Unix socket): its own threads
    never switch namespace. A short-lived process (a CNI plugin run in-process, the CLI)
    switches its one thread there and back for the one socket() call."""
    if _helper_wanted:
        return _helper_socket(path)
    nsfd = open_netns(path)
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(nsfd)
        try:
            return _socket_here().detach()
        finally:
            try:
                setns(home)
            except OSError:
                os._exit(3)  # never go on in the wrong namespace
    except OSError as e:
        raise Unavailable(f"cannot enter network namespace {path}: {e.strerror}") from None
    finally:
        os.close(nsfd)
        os.close(home)


# -- the persistent helper (for muslind) ----------------------------------------------

_helper_wanted = False
_helper: tuple[subprocess.Popen, socket.socket] | None = None
_helper_lock = threading.Lock()
SOCKET = "<netlink socket>"  # a request for a socket in the namespace, not a function call


def use_helper(on: bool = True) -> None:
    """Run every later `run_in_netns` (and `netlink_socket`) through the persistent helper
    process (off: fork per call)."""
    global _helper_wanted
    _helper_wanted = on
    if on:
        with _helper_lock:
            _ensure_helper()  # started now, not on the first request
    else:
        stop_helper()


def stop_helper() -> None:
    global _helper
    with _helper_lock:
        h, _helper = _helper, None
    if h is not None:
        proc, sock = h
        sock.close()  # EOF: the helper leaves
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _frame(payload: Any) -> bytes:
    data = pickle.dumps(payload)
    return struct.pack("!I", len(data)) + data


def _recv_exact(sock: socket.socket, n: int, fds: list[int]) -> bytes | None:
    buf = b""
    while len(buf) < n:
        data, got, _flags, _addr = socket.recv_fds(sock, n - len(buf), 1)
        fds.extend(got)
        if not data:
            return None
        buf += data
    return buf


def _read_reply(sock: socket.socket) -> tuple[Any, list[int]] | None:
    fds: list[int] = []
    head = _recv_exact(sock, 4, fds)
    if head is None:
        return None
    body = _recv_exact(sock, struct.unpack("!I", head)[0], fds)
    return (pickle.loads(body), fds) if body is not None else None


def _ensure_helper() -> tuple[subprocess.Popen, socket.socket]:
    global _helper
    if _helper is None or _helper[0].poll() is not None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = subprocess.Popen([sys.executable, "-m", "muslin.dataplane.nsexec", str(theirs.fileno())],
                                pass_fds=[theirs.fileno()], close_fds=True)
        theirs.close()
        _helper = (proc, mine)
    return _helper


def _ask_helper(path: str, request: Any) -> tuple[Any, list[int]]:
    global _helper
    with _helper_lock:
        proc, sock = _ensure_helper()
        try:
            sock.sendall(_frame(request))
            ans = _read_reply(sock)
        except OSError:
            ans = None
        if ans is None:
            _helper = None
            sock.close()
            proc.kill()
            proc.wait()
            raise Unavailable(f"netns helper process died while working in {path}")
    (ok, value), fds = ans
    if not ok:
        for fd in fds:
            os.close(fd)
        raise value
    return value, fds


def _helper_socket(path: str) -> int:
    _value, fds = _ask_helper(path, (path, SOCKET, ()))
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise Unavailable(f"netns helper gave no socket for {path}")
    return fds[0]


def _helper_call(path: str, fn: Callable[..., Any], args: tuple) -> Any:
    try:
        pickle.dumps(fn)
    except Exception:  # noqa: BLE001 - not picklable (e.g. a local function): fork instead
        return _fork_call(path, fn, args)
    value, fds = _ask_helper(path, (path, fn, args))
    for fd in fds:
        os.close(fd)
    return value


def _fork_call(path: str, fn: Callable[..., Any], args: tuple) -> Any:
    global _helper_wanted
    saved, _helper_wanted = _helper_wanted, False
    try:
        return run_in_netns(path, fn, *args)
    finally:
        _helper_wanted = saved


def _serve(fd: int) -> None:
    """The helper's loop: (path, fn, args) in, (ok, value) out, one frame each (a SOCKET
    request is answered with a netlink socket made in that namespace, passed along);
    always back in its own namespace before answering. Exits on EOF."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    sock = socket.socket(fileno=fd)
    while True:
        try:
            got = _read_reply(sock)
        except Exception as e:  # noqa: BLE001
            sock.sendall(_frame((False, Unavailable(f"netns helper: bad request: {e}"))))
            continue
        if got is None:
            return
        (path, fn, args), _fds = got
        made: socket.socket | None = None
        try:
            nsfd = os.open(path, os.O_RDONLY)
        except OSError as e:
            payload: tuple = (False, NotFound(f"network namespace {path} does not exist") if e.errno == 2
                              else Unavailable(f"cannot open network namespace {path}: {e.strerror}"))
        else:
            try:
                setns(nsfd)
                if fn == SOCKET:
                    made = _socket_here()
                    payload = (True, None)
                else:
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
        if made is not None:
            socket.send_fds(sock, [data], [made.fileno()])
            made.close()
        else:
            sock.sendall(data)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))

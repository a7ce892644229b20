"""The agent side of the CNI fast path: muslind serves `serve_one` on its Unix socket.

Two framings on one socket, told apart by the first byte of each request
(docs/architecture.md, "Agent socket framing"):
- 1, a JSON line (cni/entry.py): {"plugin": "cni"|"ipam", "env": {...}, "stdin": "..."}
  in, {"stdout": "...", "rc": N} out. The first byte is never "M".
- 2, length-prefixed (native/muslin-fwd.c): b"MSL2", then three fields, each a 4-byte
  big-endian length and that many bytes: plugin (b"cni"|b"ipam"), environment
  (KEY=VALUE entries, each ended by a NUL), stdin (any bytes). Answer: b"MSL2", rc
  (4-byte big-endian signed), stdout length (4-byte big-endian), stdout (UTF-8).
A connection may carry several requests, one after the other. The handler never changes
the calling process's network namespace (work inside a container goes through the
control layer).
"""

from __future__ import annotations

import json
import logging
import struct
import time
from typing import BinaryIO, Callable

from muslin import events
from muslin.cni import handler
from muslin.cni.handler import handle, handle_ipam

handler.KEEP_OPEN = {}  # muslind: the store stays open across requests

log = logging.getLogger("muslind")

MAGIC = b"MSL2"
MAX_PLUGIN, MAX_ENV, MAX_STDIN = 16, 1 << 20, 64 << 20
_LEN = struct.Struct(">I")
_HEAD = struct.Struct(">4siI")  # magic, rc, stdout length


class FramingError(ValueError):
    """A request that does not follow its framing: answered once, then the connection closes."""


def _error(code: int, msg: str) -> str:
    return json.dumps({"cniVersion": "1.1.0", "code": code, "msg": " ".join(msg.split())[:300]})


# Requests muslind answers besides the two plugins (e.g. "stats": the phase timings for
# `python -m bench`), registered by the daemon: name -> f(stdin) -> (stdout, rc).
EXTRA: dict[str, Callable[[bytes], tuple[str, int]]] = {}


def _run(plugin: str, env: dict[str, str], stdin: bytes) -> tuple[str, int]:
    if plugin in EXTRA:
        return _serve(plugin, env, stdin)
    t0 = time.perf_counter()
    out, rc = _serve(plugin, env, stdin)
    if events.LISTENERS:  # muslind's metrics: requests and latency per verb
        events.emit("cni_request", plugin=plugin, verb=env.get("CNI_COMMAND", ""), rc=rc,
                    seconds=time.perf_counter() - t0)
    return out, rc


def _serve(plugin: str, env: dict[str, str], stdin: bytes) -> tuple[str, int]:
    try:
        if plugin in EXTRA:
            return EXTRA[plugin](stdin)
        return (handle_ipam if plugin == "ipam" else handle)(env, stdin)
    except Exception as e:  # the handler never raises; this is the last resort, never a traceback
        log.exception("agent request failed")
        events.emit("error", source="cni", kind="internal")
        return _error(999, f"internal error: {e}"), 1


# --------------------------------------------------------------------------- framing 1: JSON lines


def _answer(stdout: str, rc: int) -> bytes:
    return json.dumps({"stdout": stdout, "rc": rc}).encode() + b"\n"


def serve_request(line: bytes) -> bytes:
    """One framing-1 request line in, its answer line out."""
    try:
        req = json.loads(line)
        plugin = req.get("plugin", "cni")
        env = {str(k): str(v) for k, v in dict(req["env"]).items()}
        stdin = str(req.get("stdin", "")).encode("utf-8", "surrogateescape")
        if plugin not in ("cni", "ipam", *EXTRA):
            raise ValueError(f"unknown plugin {plugin!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return _answer(_error(6, f"malformed agent request: {e}"), 1)
    return _answer(*_run(plugin, env, stdin))


# --------------------------------------------------------------------------- framing 2: length-prefixed


def encode_request(plugin: str, env: dict[str, str], stdin: bytes) -> bytes:
    """A framing-2 request (what native/muslin-fwd.c sends; for tests and tools)."""
    block = b"".join(f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0" for k, v in env.items())
    p = plugin.encode()
    return MAGIC + _LEN.pack(len(p)) + p + _LEN.pack(len(block)) + block + _LEN.pack(len(stdin)) + stdin


def encode_answer(stdout: str, rc: int) -> bytes:
    out = stdout.encode("utf-8", "surrogateescape")
    return _HEAD.pack(MAGIC, max(-2**31, min(rc, 2**31 - 1)), len(out)) + out


def decode_answer(data: bytes) -> tuple[str, int]:
    """(stdout, rc) of one whole framing-2 answer; FramingError if it is not one."""
    if len(data) < _HEAD.size:
        raise FramingError(f"answer of {len(data)} bytes is shorter than its header")
    magic, rc, n = _HEAD.unpack_from(data)
    if magic != MAGIC or len(data) != _HEAD.size + n:
        raise FramingError("not a framing-2 answer")
    return data[_HEAD.size:].decode("utf-8", "surrogateescape"), rc


def parse_env(block: bytes) -> dict[str, str]:
    """KEY=VALUE\\0... -> dict (the first of duplicate keys wins, as in os.environ)."""
    if block and not block.endswith(b"\0"):
        raise FramingError("environment does not end with a NUL")
    env: dict[str, str] = {}
    for entry in block.split(b"\0")[:-1]:
        key, eq, value = entry.partition(b"=")
        if not eq or not key:
            raise FramingError(f"environment entry without KEY=: {entry[:40]!r}")
        env.setdefault(key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
    return env


def _field(rfile: BinaryIO, what: str, limit: int) -> bytes:
    head = rfile.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError(f"request ends before the length of {what}")
    (n,) = _LEN.unpack(head)
    if n > limit:
        raise FramingError(f"{what} of {n} bytes is over the limit of {limit}")
    data = rfile.read(n)
    if len(data) < n:
        raise EOFError(f"request ends inside {what} ({len(data)} of {n} bytes)")
    return data


def read_request(rfile: BinaryIO) -> tuple[str, dict[str, str], bytes]:
    """One framing-2 request from rfile (its magic not yet read). EOFError when the peer
    stops in the middle, FramingError when it is not framing 2."""
    magic = rfile.read(len(MAGIC))
    if magic != MAGIC:
        if len(magic) < len(MAGIC):
            raise EOFError("request ends inside its magic")
        raise FramingError(f"unknown framing {magic!r}: this muslind speaks JSON lines and {MAGIC.decode()}")
    plugin = _field(rfile, "plugin", MAX_PLUGIN).decode("ascii", "replace")
    if plugin not in ("cni", "ipam", *EXTRA):
        raise FramingError(f"unknown plugin {plugin!r}")
    env = parse_env(_field(rfile, "environment", MAX_ENV))
    return plugin, env, _field(rfile, "stdin", MAX_STDIN)


# --------------------------------------------------------------------------- one connection


def serve_one(rfile: BinaryIO, wfile: BinaryIO) -> bool:
    """Serve the next request on a connection; False when the connection is done."""
    first = rfile.peek(1)[:1]  # type: ignore[attr-defined]  # a BufferedReader
    if not first:
        return False
    if first != MAGIC[:1]:
        line = rfile.readline()
        wfile.write(serve_request(line))
        wfile.flush()
        return line.endswith(b"\n")
    try:
        plugin, env, stdin = read_request(rfile)
    except EOFError as e:
        log.warning("agent request dropped: %s", e)
        return False
    except FramingError as e:
        wfile.write(encode_answer(_error(6, f"malformed agent request: {e}"), 1))
        wfile.flush()
        return False
    wfile.write(encode_answer(*_run(plugin, env, stdin)))
    wfile.flush()
    return True

"""Console scripts `muslin-cni` and `muslin-ipam` (the Python entry).

Where scripts/setup.sh could build it, `muslin-cni`/`muslin-ipam` are the native
forwarder (native/muslin-fwd.c, the same behaviour without an interpreter, framing 2),
which execs this entry (installed as `muslin-cni-py`/`muslin-ipam-py`) when no agent
answers. Executed once per container operation, so this module imports only the standard
library. Fast path: when the muslind agent's socket exists and answers (path from
MUSLIN_AGENT_SOCKET, else the config's `agentSocket` (top level or under `ipam`), else
/run/muslin/muslind.sock), the request is forwarded as one JSON line (framing 1,
cni/server.py) {"plugin": "cni"|"ipam", "env": {...}, "stdin": "..."} and the answer
{"stdout": "...", "rc": N} is printed. Otherwise `muslin.cni.handler` runs in-process.
"""

from __future__ import annotations

import _socket  # the C module: `socket` would build its IntEnums (~2 ms per plugin call)
import json
import os
import sys

DEFAULT_SOCKET = "/run/muslin/muslind.sock"
VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")  # = cni.types.SUPPORTED_VERSIONS
SUPPORTED = ", ".join(VERSIONS)
CONNECT_TIMEOUT = 0.25
ANSWER_TIMEOUT = 300.0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(("CNI_", "MUSLIN_"))}


def _socket_path(stdin: bytes) -> str:
    if "MUSLIN_AGENT_SOCKET" in os.environ:
        return os.environ["MUSLIN_AGENT_SOCKET"]
    if b'"agentSocket"' in stdin:
        try:
            conf = json.loads(stdin)
            for where in (conf, conf.get("ipam") or {}):
                if isinstance(where, dict) and isinstance(where.get("agentSocket"), str):
                    return where["agentSocket"]
        except (ValueError, AttributeError, RecursionError):
            pass  # the handler reports a bad config
    return DEFAULT_SOCKET


def _via_agent(plugin: str, env: dict[str, str], stdin: bytes) -> tuple[str, int] | None:
    """Ask muslind; None when no agent answers the connect (then run in-process)."""
    path = _socket_path(stdin)
    if not path or not os.path.exists(path):
        return None
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(path)
        except OSError:
            return None
        s.settimeout(ANSWER_TIMEOUT)
        line = json.dumps({"plugin": plugin, "env": env, "stdin": stdin.decode("utf-8", "surrogateescape")})
        try:
            s.sendall(line.encode() + b"\n")
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            ans = json.loads(buf)
            return str(ans["stdout"]), int(ans["rc"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            msg = {"cniVersion": "1.1.0", "code": 11, "msg": f"muslind agent at {path} did not answer: {e}",
                   "details": type(e).__name__}
            return json.dumps(msg), 1
    finally:
        s.close()


def _version(stdin: bytes) -> tuple[str, int]:
    """VERSION answered here (runtimes ask before every ADD and DEL): the same answer as
    the handler's, without importing it or asking the agent."""
    try:
        conf = json.loads(stdin.decode("utf-8") or "{}")
        v = conf.get("cniVersion") if isinstance(conf, dict) else None
    except (ValueError, RecursionError):
        v = None
    v = v if isinstance(v, str) and v in VERSIONS else VERSIONS[-1]
    return json.dumps({"cniVersion": v, "supportedVersions": list(VERSIONS)}), 0


def _run(plugin: str) -> int:
    env = _env()
    if not env.get("CNI_COMMAND"):
        name = "muslin-ipam" if plugin == "ipam" else "muslin-cni"
        print(f"{name}: Muslin CNI {'IPAM ' if plugin == 'ipam' else ''}plugin; "
              f"CNI protocol versions supported: {SUPPORTED}", file=sys.stderr)
        return 0
    try:
        stdin = b"" if env["CNI_COMMAND"] == "VERSION" and sys.stdin.isatty() else sys.stdin.buffer.read()
    except OSError as e:
        out, rc = json.dumps({"cniVersion": "1.1.0", "code": 5, "msg": f"cannot read stdin: {e}"}), 1
    else:
        ans = _version(stdin) if env["CNI_COMMAND"] == "VERSION" else _via_agent(plugin, env, stdin)
        if ans is None:
            try:
                from muslin.cni import handler
                ans = (handler.handle_ipam if plugin == "ipam" else handler.handle)(env, stdin)
            except BaseException as e:  # noqa: BLE001 - never a traceback
                ans = json.dumps({"cniVersion": "1.1.0", "code": 999, "msg": f"internal error: {e}",
                                  "details": type(e).__name__}), 1
        out, rc = ans
    if out:
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
        sys.stdout.flush()
    return rc


def _exit(rc: int) -> None:
    """Leave without interpreter finalisation (~5 ms on the fast path, more after an
    in-process call): the answer is written and flushed, the store closed, nothing is pending."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(rc)


def main() -> None:
    _exit(_run("cni"))


def main_ipam() -> None:
    _exit(_run("ipam"))

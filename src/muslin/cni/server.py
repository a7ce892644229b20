"""The agent side of the CNI fast path: muslind mounts `serve_request` on its Unix socket.

One request line {"plugin": "cni"|"ipam", "env": {...}, "stdin": "..."} in, one answer
line {"stdout": "...", "rc": N} out. The handler never changes the calling process's
network namespace (work inside a container goes through the control layer).
"""

from __future__ import annotations

import json

from muslin.cni import handler
from muslin.cni.handler import handle, handle_ipam

handler.KEEP_OPEN = {}  # muslind: the store stays open across requests


def _answer(stdout: str, rc: int) -> bytes:
    return json.dumps({"stdout": stdout, "rc": rc}).encode() + b"\n"


def serve_request(line: bytes) -> bytes:
    try:
        req = json.loads(line)
        plugin = req.get("plugin", "cni")
        env = {str(k): str(v) for k, v in dict(req["env"]).items()}
        stdin = str(req.get("stdin", "")).encode("utf-8", "surrogateescape")
        if plugin not in ("cni", "ipam"):
            raise ValueError(f"unknown plugin {plugin!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        err = {"cniVersion": "1.1.0", "code": 6, "msg": f"malformed agent request: {e}"}
        return _answer(json.dumps(err), 1)
    out, rc = (handle_ipam if plugin == "ipam" else handle)(env, stdin)
    return _answer(out, rc)

"""Runs INSIDE the benchmark's host namespace: executes CNI plugin calls like a runtime
and times each one. Reads one JSON job on stdin, prints one JSON answer.

job = {"calls": [{"exe", "env", "stdin"[, "raw": agent socket]}...], "parallel": N}
answer = {"times": [seconds...], "wall": seconds, "errors": [first few error lines]}
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def _raw(sock: str, env: dict[str, str], stdin: bytes, plugin: bytes = b"cni") -> tuple[int, bytes]:
    """The request muslin-cni would send (framing 2, cni/server.py), from this process."""
    block = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock)
        s.sendall(b"MSL2" + struct.pack(">I", len(plugin)) + plugin + struct.pack(">I", len(block)) + block
                  + struct.pack(">I", len(stdin)) + stdin)
        buf = b""
        while len(buf) < 12 or len(buf) < 12 + struct.unpack_from(">I", buf, 8)[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("muslind closed the connection")
            buf += chunk
    finally:
        s.close()
    return struct.unpack_from(">i", buf, 4)[0], buf[12:]


def _one(call: dict) -> tuple[float, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **call["env"]}
    t0 = time.perf_counter()
    if call.get("raw"):  # no plugin process: the agent's own time
        rc, out = _raw(call["raw"], call["env"], call["stdin"].encode())
        p = subprocess.CompletedProcess([], rc, out, b"")
    else:
        p = subprocess.run([call["exe"]], input=call["stdin"].encode(), env=env, capture_output=True)
    dt = time.perf_counter() - t0
    err = ""
    if p.returncode != 0:
        err = f"{call['env'].get('CNI_COMMAND')} {call['env'].get('CNI_CONTAINERID')}: rc={p.returncode} " \
              f"{p.stdout.decode(errors='replace').strip()[:300]} {p.stderr.decode(errors='replace').strip()[:300]}"
    return dt, err


def main() -> int:
    job = json.load(sys.stdin)
    calls, par = job["calls"], int(job.get("parallel", 1))
    t0 = time.perf_counter()
    if par <= 1:
        res = [_one(c) for c in calls]
    else:
        with ThreadPoolExecutor(par) as ex:
            res = list(ex.map(_one, calls))
    wall = time.perf_counter() - t0
    errors = [e for _, e in res if e]
    json.dump({"times": [t for t, _ in res], "wall": wall, "errors": errors[:5], "nerrors": len(errors)},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

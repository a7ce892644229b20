"""Process cost of the plugin front: the native forwarder (native/muslin-fwd.c) vs the
Python entry (muslin-cni-py), next to /bin/true and the reference Go plugin, and the same
STATUS request to muslind with no process at all (framing 2 from this process).

Everything runs in one throwaway host namespace with its own muslind; the calls are
alternated (one of each per round) and each is a fork+exec with stdin from a pipe, like a
runtime. Wall time and the child's CPU time (user+sys, from wait4) per call; medians.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
REF = "/usr/lib/cni/bridge"


def is_native(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def is_static(path: Path) -> bool:
    """An ELF64 without a PT_INTERP program header (no dynamic loader)."""
    import struct

    data = path.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def _spawn(exe: str, env: dict[str, str], stdin: bytes) -> tuple[float, float, int]:
    """(wall s, child CPU s, status) of one fork+exec fed `stdin`."""
    r, w = os.pipe()
    os.write(w, stdin)  # small: fits the pipe
    os.close(w)
    out = os.open(os.devnull, os.O_WRONLY)
    t0 = time.perf_counter()
    pid = os.posix_spawn(exe, [exe], env, file_actions=[(os.POSIX_SPAWN_DUP2, r, 0), (os.POSIX_SPAWN_DUP2, out, 1)])
    _, status, ru = os.wait4(pid, 0)
    dt = time.perf_counter() - t0
    os.close(r)
    os.close(out)
    return dt, ru.ru_utime + ru.ru_stime, os.waitstatus_to_exitcode(status)


def _raw(sock: str, env: dict[str, str], stdin: bytes) -> tuple[float, float, int]:
    from muslin.cni.server import decode_answer, encode_request

    t0 = time.perf_counter()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall(encode_request("cni", env, stdin))
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) >= 12 and len(buf) >= 12 + int.from_bytes(buf[8:12], "big"):
            break
    s.close()
    _, rc = decode_answer(buf)
    return time.perf_counter() - t0, 0.0, rc


def inner(job: dict) -> dict:
    """Runs inside the host namespace: every variant `job['rounds']` times, alternated."""
    sock, state = job["sock"], job["state"]
    conf = json.dumps({"cniVersion": "1.1.0", "name": "procbench", "type": "muslin-cni",
                       "ipam": {"type": "muslin-ipam", "subnet": "10.131.0.0/24"}}).encode()
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    version = {**base, "CNI_COMMAND": "VERSION"}
    status = {**base, "CNI_COMMAND": "STATUS", "MUSLIN_STATE_DIR": state, "MUSLIN_AGENT_SOCKET": sock}
    variants = {
        "/bin/true": lambda: _spawn("/bin/true", base, b""),
        "reference bridge VERSION": lambda: _spawn(REF, version, conf),
        "native muslin-cni VERSION": lambda: _spawn(job["native"], version, conf),
        "Python entry VERSION": lambda: _spawn(job["python"], version, conf),
        **({"native muslin-cni VERSION, dynamically linked": lambda: _spawn(job["dynamic"], version, conf)}
           if job.get("dynamic") else {}),
        "native muslin-cni STATUS via muslind": lambda: _spawn(job["native"], status, conf),
        "Python entry STATUS via muslind": lambda: _spawn(job["python"], status, conf),
        "STATUS to muslind, no process (framing 2)": lambda: _raw(sock, {k: v for k, v in status.items()
                                                                        if k != "PATH"}, conf),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for k, f in variants.items():  # warm-up, and every variant must work
        _, _, rc = f()
        if rc != 0:
            raise RuntimeError(f"{k}: exit status {rc}")
    for _ in range(job["rounds"]):
        for k, f in variants.items():
            dt, cpu, _ = f()
            times[k].append((dt, cpu))
    return {k: {"n": len(v), "wall_ms": statistics.median(t for t, _ in v) * 1e3,
                "cpu_ms": statistics.median(c for _, c in v) * 1e3} for k, v in times.items()}


def _dynamic_build(tmp: Path) -> str:
    """A dynamically linked build of the forwarder next to the installed one, to compare."""
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return ""
    out = tmp / "muslin-cni-dynamic"
    src = HERE.parent / "native" / "muslin-fwd.c"
    p = subprocess.run([cc, "-O2", "-s", f'-DMUSLIN_PY_DIR="{VENV_BIN}"', "-o", str(out), str(src)],
                       capture_output=True, text=True)
    return str(out) if p.returncode == 0 else ""


def run_process(rounds: int, log=print) -> dict:
    from bench.ns import Namespaces, token

    native, python = VENV_BIN / "muslin-cni", VENV_BIN / "muslin-cni-py"
    if not is_native(native) or not python.exists():
        return {"skipped": "the native muslin-cni is not installed (scripts/setup.sh builds it with a C compiler)"}
    nss = Namespaces(f"mb{token(4)}")
    tmp = Path(tempfile.mkdtemp(prefix="muslin-bench-proc-"))
    daemon = None
    try:
        host = nss.host("hproc")
        sock, state = str(tmp / "muslind.sock"), str(tmp / "state")
        log_f = open(tmp / "muslind.log", "w")
        daemon = subprocess.Popen(["ip", "netns", "exec", host, str(VENV_BIN / "muslind"), "--docker-socket", "",
                                   "--agent-socket", sock, "--state-dir", state, "--reconcile-interval", "0",
                                   "--log-level", "warning"], stdout=log_f, stderr=log_f)
        deadline = time.time() + 30
        while not os.path.exists(sock):
            if daemon.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"muslind did not start: {(tmp / 'muslind.log').read_text()[-500:]}")
            time.sleep(0.05)
        job = {"sock": sock, "state": state, "native": str(native), "python": str(python), "rounds": rounds,
               "dynamic": _dynamic_build(tmp), "native_static": is_static(native)}
        p = subprocess.run(["ip", "netns", "exec", host, sys.executable, "-m", "bench.process"],
                           input=json.dumps(job), text=True, capture_output=True, timeout=1800, cwd=HERE.parent)
        if p.returncode != 0:
            raise RuntimeError(f"process bench failed: {p.stderr.strip()[-800:]}")
        res = json.loads(p.stdout)
        res["native_static"] = job["native_static"]
        for k, v in res.items():
            if not isinstance(v, dict):
                continue
            log(f"  {k}: p50 {v['wall_ms']:.2f} ms wall, {v['cpu_ms']:.2f} ms CPU")
        return res
    finally:
        if daemon and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        nss.cleanup()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    json.dump(inner(json.load(sys.stdin)), sys.stdout)

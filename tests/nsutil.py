"""Throwaway network namespaces for tests: random names, always removed."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def suffix(n: int = 6) -> str:
    return secrets.token_hex(n // 2)


def wait_until(pred, timeout: float = 15.0, step: float = 0.2) -> bool:
    """Poll `pred` until it is true or `timeout` s have passed; its last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def sh(*cmd: str, check: bool = True, input: str | None = None, env: dict | None = None,
       timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, input=input,
                          env=env, timeout=timeout)


class Netns:
    """A named network namespace (/run/netns/NAME) with loopback up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def run(self, *cmd: str, check: bool = True, input: str | None = None, env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, input=input, env=env, timeout=timeout)

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)

    def ping(self, addr: str, count: int = 1, size: int | None = None) -> bool:
        args = ["ping", "-c", str(count), "-W", "2", "-i", "0.2"]
        if size:
            args += ["-s", str(size), "-M", "do"]
        return self.run(*args, str(addr), check=False).returncode == 0

    def links(self) -> list[str]:
        out = sh("ip", "-n", self.name, "-o", "link", "show").stdout
        return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]

    def links_after_reap(self, timeout: float = 10) -> list[str]:
        """links(), once a muslind has deleted the veths it retired here (control/reaper.py)."""
        import time

        from muslin.model.names import REAP_GROUP

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not sh("ip", "-n", self.name, "-o", "link", "show", "group", str(REAP_GROUP)).stdout.strip():
                break
            time.sleep(0.05)
        return self.links()

    def delete(self) -> None:
        # Kill anything still running inside, then remove the namespace.
        pids = sh("ip", "netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", self.name, check=False)


class ExistingNetns(Netns):
    """A namespace made by someone else (a lab, a sandbox, a runtime): run in it, never made
    or removed here."""

    def __init__(self, name: str) -> None:
        self.name, self.path = name, f"/run/netns/{name}"


class NetnsFactory:
    def __init__(self, prefix: str = "mt") -> None:
        self.prefix = prefix
        self.made: list[Netns] = []

    def __call__(self, role: str = "ns") -> Netns:
        ns = Netns(f"{self.prefix}-{role}-{suffix()}")
        self.made.append(ns)
        return ns

    def cleanup(self) -> None:
        for ns in reversed(self.made):
            ns.delete()
        self.made.clear()


def tool(name: str) -> str:
    """Path of a console script installed in the test venv."""
    p = VENV_BIN / name
    return str(p) if p.exists() else (shutil.which(name) or name)


ECHO_SERVER = r"""
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    data = b""
    while not data.endswith(b"\n"):
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    c.sendall(("%s " % peer[0]).encode() + data)
    c.close()
"""

ECHO_CLIENT = r"""
import socket, sys, time
deadline = time.time() + float(sys.argv[4])
while True:
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        break
    except OSError:
        if time.time() >= deadline:
            raise
        time.sleep(0.2)
c.sendall(sys.argv[3].encode() + b"\n")
out = b""
while True:
    chunk = c.recv(65536)
    if not chunk:
        break
    out += chunk
print(out.decode().strip())
"""


class EchoServer:
    """A TCP echo server in a namespace; answers '<peer address> <line>'."""

    def __init__(self, ns: Netns, addr: str = "0.0.0.0", port: int = 7007) -> None:
        self.proc = ns.popen(sys.executable, "-c", ECHO_SERVER, addr, str(port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "ready" not in line:
            self.stop()
            raise RuntimeError(f"echo server did not start: {self.proc.stderr.read()}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> "EchoServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def tcp_echo(ns: Netns, addr: str, port: int = 7007, payload: str = "hello", wait: float = 0) -> str | None:
    """Send one line to an echo server from `ns`; '<peer seen by server> <payload>' or None.
    `wait`: keep retrying the connect for that many seconds (rules that may still converge)."""
    r = ns.run(sys.executable, "-c", ECHO_CLIENT, addr, str(port), payload, str(wait), check=False,
               timeout=20 + wait)
    return r.stdout.strip() if r.returncode == 0 else None


def random_subnet24() -> str:
    """A random 10.x.y.0/24 for a test (used only inside test namespaces)."""
    import random

    return f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24"


class Muslind:
    """muslind started in a test namespace with its own state dir and sockets; stopped by PID."""

    def __init__(self, ns: Netns, state: Path, *extra: str, docker_socket: str = "") -> None:
        import time

        state = Path(state)
        self.sock = state / "agent.sock"
        self.log_path = state / "muslind.log"
        state.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "w")
        self.proc = ns.popen(tool("muslind"), "--docker-socket", docker_socket, "--agent-socket", str(self.sock),
                             "--state-dir", str(state), "--reconcile-interval", "0", "--log-level", "warning",
                             *extra, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(150):
            if self.sock.exists() or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        if not self.sock.exists():
            self.stop()
            raise RuntimeError(f"muslind did not start: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> "Muslind":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

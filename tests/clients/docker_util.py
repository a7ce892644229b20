"""A Docker engine and muslind for tests: started only when needed, stopped by PID.

If `docker info` already works, that engine is used as it is. Otherwise a private
containerd + dockerd are started (own sockets, data-root, exec-root and pidfile in a
temp dir, `--bridge none` so no docker0 appears) and, at the end, stopped by PID and
their firewall leftovers (Docker's iptables chains, FORWARD policy, ip_forward) removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

PLUGIN = "muslin"
PLUGIN_DIR = "/run/docker/plugins"
IMAGE = "muslin-busybox:latest"
VENV_BIN = Path(sys.executable).parent


def run(*cmd: str, check: bool = True, env: dict | None = None, timeout: float = 120,
        input: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def wait_for(pred, timeout: float, what: str, interval: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop_pid(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


ROOT_NS_LOCK = "/tmp/muslin-rootns-clients.lock"


@contextlib.contextmanager
def root_ns_lock(timeout: float = 900):
    """Serialise tests that run Muslin in the ROOT namespace (Docker, Podman): two Muslin
    instances with different stores there would fight over the one `inet muslin` table."""
    fd = os.open(ROOT_NS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:
                    raise AssertionError(f"{ROOT_NS_LOCK} held by another root-namespace test for {timeout}s")
                time.sleep(0.5)
        before = _root_tables()
        yield
        left = sorted(_root_tables() - before)
        assert not left, f"the root namespace kept nftables tables this test made: {left}"
    finally:
        os.close(fd)


def _root_tables() -> set[str]:
    """The root namespace's nftables tables (no one else changes them while the lock is held)."""
    r = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    return {line.strip() for line in r.stdout.splitlines() if line.strip()}


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 120) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def unix_post(path: str, url: str, body: Any = None, method: str = "POST") -> tuple[int, Any]:
    c = UnixHTTP(path)
    try:
        data = b"" if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, url, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, raw.decode(errors="replace")
    finally:
        c.close()


def iptables_save(binary: str = "iptables-save") -> str:
    r = run(binary, check=False)
    return r.stdout if r.returncode == 0 else ""


def _chain_policy(save: str, table: str, chain: str) -> str | None:
    cur = None
    for line in save.splitlines():
        if line.startswith("*"):
            cur = line[1:]
        elif cur == table and line.startswith(f":{chain} "):
            return line.split()[1]
    return None


DOCKER_CHAINS = {"filter": ["DOCKER-USER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2", "DOCKER"],
                 "nat": ["DOCKER"]}


def remove_docker_iptables(before: str) -> None:
    """Undo what a dockerd we started left in iptables: jumps to DOCKER* chains, those
    chains, and the FORWARD policy; drop tables that did not exist before and are now empty."""
    for table, chains in DOCKER_CHAINS.items():
        save = run("iptables", "-t", table, "-S", check=False).stdout
        jumps = {f"-j {c}" for c in chains}
        for line in save.splitlines():
            if not line.startswith("-A ") or any(line.startswith(f"-A {c} ") for c in chains):
                continue
            if _jump(line) in jumps or "docker0" in line:
                run("iptables", "-t", table, "-D", *shlex.split(line)[1:], check=False)
        for c in chains:
            run("iptables", "-t", table, "-F", c, check=False)
        for c in chains:
            run("iptables", "-t", table, "-X", c, check=False)
    pol = _chain_policy(before, "filter", "FORWARD") or "ACCEPT"
    run("iptables", "-t", "filter", "-P", "FORWARD", pol, check=False)
    for table in ("filter", "nat"):
        if f"*{table}" in before:
            continue
        now = run("iptables", "-t", table, "-S", check=False).stdout.splitlines()
        if all(line.startswith("-P ") and line.endswith("ACCEPT") for line in now):
            run("nft", "delete", "table", "ip", table, check=False)


def _jump(line: str) -> str:
    parts = line.split()
    if "-j" in parts:
        i = parts.index("-j")
        return f"-j {parts[i + 1]}" if i + 1 < len(parts) else ""
    return ""


def free_private_slash30(taken_extra: list[ipaddress.IPv4Network] = ()) -> ipaddress.IPv4Network:
    """A random 10.x.y.z/30 that overlaps no route or address on this host."""
    import random

    routes = [ipaddress.ip_network(r["dst"]) for r in json.loads(run("ip", "-j", "route", "show", "table", "all").stdout)
              if r.get("dst") not in (None, "default") and ":" not in r.get("dst", ":")
              and _is_net(r["dst"])]
    for _ in range(1000):
        n = ipaddress.ip_network(f"10.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randrange(0, 256, 4)}/30")
        if not any(n.overlaps(r) for r in [*routes, *taken_extra]) and not n.overlaps(ipaddress.ip_network("10.200.0.0/16")):
            return n
    raise AssertionError("no free /30")


def _is_net(s: str) -> bool:
    try:
        ipaddress.ip_network(s, strict=False)
        return True
    except ValueError:
        return False


def random_subnet(prefix: int = 24, avoid: list = ()) -> ipaddress.IPv4Network:
    """A random 10.x.y.0/prefix (outside Muslin's default 10.200/16) overlapping no host route."""
    import random

    routes = [ipaddress.ip_network(r["dst"], strict=False) for r in
              json.loads(run("ip", "-j", "route", "show", "table", "all").stdout)
              if r.get("dst") not in (None, "default") and ":" not in r.get("dst", ":") and _is_net(r["dst"])]
    for _ in range(1000):
        n = ipaddress.ip_network(f"10.{random.randint(0, 254)}.{random.randint(0, 255)}.0/{prefix}", strict=False)
        bad = [*routes, *avoid, ipaddress.ip_network("10.200.0.0/16")]
        if not any(n.overlaps(r) for r in bad):
            return n
    raise AssertionError("no free subnet")


def import_busybox(root: Path, env: dict[str, str]) -> None:
    """IMAGE (a static busybox, applets as symlinks, /www/index.html) imported into the
    engine that `env` (DOCKER_HOST) names; no registry needed."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "sleep", "ping", "httpd", "wget", "ip", "nslookup", "cat", "echo", "ls", "nc", "hostname"):
        if not (root / "bin" / applet).is_symlink():
            os.symlink("busybox", root / "bin" / applet)
    for sub in ("etc", "www", "tmp", "proc", "sys", "dev"):
        (root / sub).mkdir(exist_ok=True)
    (root / "www" / "index.html").write_text("hello from muslin\n")
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    r = subprocess.run(["docker", "import", "-", IMAGE], stdin=tar.stdout, capture_output=True, text=True,
                       env=env, timeout=120)
    tar.wait()
    if r.returncode != 0:
        raise AssertionError(f"docker import failed: {r.stderr}")


class DockerEnv:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp"))
        self.host: str | None = None  # DOCKER_HOST when private
        self.containerd: subprocess.Popen | None = None
        self.dockerd: subprocess.Popen | None = None
        self.muslind: subprocess.Popen | None = None
        self.state = self.dir / "muslin-state"
        self.plugin_sock = f"{PLUGIN_DIR}/{PLUGIN}.sock"
        self.agent_sock = str(self.dir / "agent.sock")
        self.ipt_before = ""
        self.forward_before = ""
        self.owned = False
        self.seen_bridges: set[str] = set()
        self.made_dirs = [d for d in ("/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd")
                          if not os.path.isdir(d)]
        self.logs: list[Path] = []

    # -------------------------------------------------------------- docker client
    @property
    def env(self) -> dict[str, str]:
        e = dict(os.environ)
        if self.host:
            e["DOCKER_HOST"] = self.host
        e["DOCKER_API_VERSION"] = "1.41"
        return e

    @property
    def api_sock(self) -> str:
        return self.host[len("unix://"):] if self.host else "/var/run/docker.sock"

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return run("docker", *args, check=check, env=self.env, timeout=timeout)

    def api(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        return unix_post(self.api_sock, "/v1.41" + url, body, method)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if Path(self.plugin_sock).exists():
            raise AssertionError(f"{self.plugin_sock} exists: another muslind serves Docker; refusing to interfere")
        if run("docker", "info", check=False, timeout=20).returncode == 0:
            self.host = None
        else:
            self.start_engine()
        self.start_muslind()
        self.build_image()

    def start_engine(self) -> None:
        self.owned = True
        self.ipt_before = iptables_save()
        self.forward_before = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        d = self.dir
        csock = str(d / "containerd.sock")
        clog = open(d / "containerd.log", "w")
        self.logs.append(d / "containerd.log")
        (d / "containerd.toml").write_text("version = 2\n")
        self.containerd = subprocess.Popen(
            ["containerd", "--config", str(d / "containerd.toml"), "--address", csock,
             "--root", str(d / "containerd-root"), "--state", str(d / "containerd-state")],
            stdout=clog, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: Path(csock).exists(), 20, "containerd socket")
        self.host = f"unix://{d}/docker.sock"
        self._start_dockerd()

    def _start_dockerd(self) -> None:
        d = self.dir
        dlog = open(d / "dockerd.log", "a")
        self.logs.append(d / "dockerd.log")
        self.dockerd = subprocess.Popen(
            ["dockerd", "--host", self.host, "--containerd", str(d / "containerd.sock"),
             "--data-root", str(d / "data"), "--exec-root", str(d / "exec"), "--pidfile", str(d / "docker.pid"),
             "--bridge", "none", "--storage-driver", "vfs", "--log-level", "warn"],
            stdout=dlog, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.docker("info", check=False, timeout=10).returncode == 0 or self.dockerd.poll() is not None,
                 60, "dockerd")
        if self.dockerd.poll() is not None:
            raise AssertionError("dockerd exited: " + (d / "dockerd.log").read_text()[-2000:])

    def restart_dockerd(self) -> None:
        assert self.owned, "restart only a dockerd we started"
        stop_pid(self.dockerd, 30)
        self._start_dockerd()

    def start_muslind(self) -> None:
        log = open(self.dir / "muslind.log", "a")
        self.logs.append(self.dir / "muslind.log")
        muslind = str(VENV_BIN / "muslind") if (VENV_BIN / "muslind").exists() else "muslind"
        env = dict(os.environ, MUSLIN_STATE_DIR=str(self.state))
        # Its DNS forwards to no real resolver: the upstream list is this test's (empty unless a test
        # writes one), and it asks our dockerd (DOCKER_HOST) for container names.
        self.resolv_conf = self.dir / "upstream-resolv.conf"
        if not self.resolv_conf.exists():
            self.resolv_conf.write_text("# no upstream resolvers in tests\n")
        self.muslind = subprocess.Popen(
            [muslind, "--docker-socket", self.plugin_sock, "--agent-socket", self.agent_sock,
             "--state-dir", str(self.state), "--log-level", "debug", "--reconcile-interval", "2",
             "--resolv-conf", str(self.resolv_conf), "--docker-api", self.api_sock, "--dns-handover", "0"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for(lambda: Path(self.plugin_sock).exists() or self.muslind.poll() is not None, 20, "muslind socket")
        if self.muslind.poll() is not None:
            raise AssertionError("muslind exited: " + (self.dir / "muslind.log").read_text()[-2000:])

    def stop_muslind(self) -> None:
        stop_pid(self.muslind)
        self.muslind = None

    def build_image(self) -> None:
        import_busybox(self.dir / "rootfs", self.env)
        self.image_built = True

    def log_tail(self, n: int = 3000) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-n:]}" for p in self.logs if p.exists())

    def stop(self) -> None:
        # Containers and networks we made are removed by the tests; sweep anything labelled ours.
        if self.host or run("docker", "info", check=False, timeout=10).returncode == 0:
            ids = self.docker("ps", "-aq", "--filter", "label=muslin-test", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            nets = self.docker("network", "ls", "-q", "--filter", "label=muslin-test", check=False).stdout.split()
            if nets:
                self.docker("network", "rm", *nets, check=False)
            if not self.owned:
                self.docker("rmi", "-f", IMAGE, check=False)
        self.stop_muslind()
        if self.owned:
            stop_pid(self.dockerd, 30)
            stop_pid(self.containerd, 20)
            remove_docker_iptables(self.ipt_before)
            if self.forward_before:
                Path("/proc/sys/net/ipv4/ip_forward").write_text(self.forward_before)
            run("umount", "-R", str(self.dir / "exec"), check=False)
            run("umount", "-R", str(self.dir / "data"), check=False)
        for d in self.made_dirs:
            try:
                os.rmdir(d)
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_docker() -> Iterator[DockerEnv]:
    """A started DockerEnv (dockerd and muslind as its plugin) under root_ns_lock, stopped at
    the end; a start that fails says why, with the logs, and leaves nothing."""
    with root_ns_lock():
        env = DockerEnv()
        try:
            env.start()
        except BaseException:
            log = env.log_tail()
            env.stop()
            raise AssertionError("could not start Docker/muslind:\n" + log) from None
        try:
            yield env
        finally:
            env.stop()

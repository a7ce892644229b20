"""What the Docker-on-many-hosts tests share: a private dockerd in a lab host's network
namespace (`Engine`), a 3-host lab with two of them (`docker_lab`), and small probes.

dockerd is started with `nsenter --net=/run/netns/HOST unshare --mount --propagation slave`,
not `ip netns exec`: `ip netns exec` mounts a fresh sysfs on /sys for the namespace, which
hides the cgroup hierarchies under /sys/fs/cgroup, and dockerd then refuses to start
("failed to start daemon: Devices cgroup isn't mounted"). The private mount namespace keeps
dockerd's own mounts (its exec-root's netns files, containers' root filesystems) out of the
machine's and lets them go with it.

dockerd touches root-namespace state (the plugin directory, /run/containerd/s for shim
sockets, cgroups, /etc/docker/key.json), so `docker_lab` holds root_ns_lock() throughout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docker_util import import_busybox, root_ns_lock, stop_pid, wait_for
from nsutil import suffix
from muslin.lab import core

PLUGIN_DIR = Path("/run/docker/plugins")
ROOT_DIRS = ("/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd", "/etc/docker")
KEY_JSON = Path("/etc/docker/key.json")
ULIMIT = ("--ulimit", "nofile=1024:1024")
CIDR = "10.244.0.0/16"


def run(*cmd: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


class Engine:
    """A private dockerd inside one lab host's network namespace, and that host's muslind
    serving it as plugin `muslin-<lab>-<host>`."""

    def __init__(self, lab: str, host: str, root: Path) -> None:
        self.lab, self.host = lab, host
        self.dir = root / host
        self.dir.mkdir(parents=True, exist_ok=True)
        self.plugin = f"muslin-{lab}-{host}"
        self.sock = PLUGIN_DIR / f"{self.plugin}.sock"
        self.api = self.dir / "docker.sock"
        self.cgroup = f"muslin-{lab}-{host}"
        self.proc: subprocess.Popen | None = None

    @property
    def ns(self) -> str:
        return core.ns_host(self.lab, self.host)

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=f"unix://{self.api}", DOCKER_API_VERSION="1.41",
                    DOCKER_CONFIG=str(self.dir / "cli"))

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = run("docker", *args, timeout=timeout, env=self.env)
        if check and r.returncode != 0:
            raise AssertionError(f"[{self.host}] docker {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def serve_plugin(self) -> None:
        """The host's muslind again, now also serving Docker on this engine's plugin socket."""
        core.restart_agent(self.lab, self.host, extra=("--docker-socket", str(self.sock),
                                                       "--docker-api", str(self.api)))
        wait_for(self.sock.exists, 30, f"{self.sock}")

    def start(self) -> None:
        (self.dir / "daemon.json").write_text("{}\n")
        log = open(self.dir / "dockerd.log", "a")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns}", "--", "unshare", "--mount", "--propagation", "slave", "--",
             "dockerd", "--config-file", str(self.dir / "daemon.json"), "-H", f"unix://{self.api}",
             "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "exec"),
             "--pidfile", str(self.dir / "docker.pid"), "--bridge=none", "--iptables=false", "--ip6tables=false",
             "--storage-driver", "vfs", "--cgroup-parent", f"/{self.cgroup}", "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        wait_for(lambda: self.proc.poll() is not None or self.docker("info", check=False, timeout=10).returncode == 0,
                 90, f"dockerd on {self.host}")
        if self.proc.poll() is not None:
            raise AssertionError(f"dockerd on {self.host} exited: {self.log()}")

    def stop(self) -> None:
        stop_pid(self.proc, 60)

    def log(self) -> str:
        p = self.dir / "dockerd.log"
        return p.read_text()[-2000:] if p.exists() else ""

    def ip(self, container: str) -> str:
        out = self.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
        return json.loads(out)["net0"]["IPAddress"]

    def exec(self, container: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.docker("exec", container, *cmd, check=False, timeout=timeout)

    def ping(self, container: str, target: str) -> bool:
        return self.exec(container, "ping", "-c", "1", "-W", "2", target).returncode == 0

    def fetch(self, container: str, target: str) -> str:
        r = self.exec(container, "wget", "-q", "-O", "-", f"http://{target}/")
        return r.stdout if r.returncode == 0 else f"wget failed ({r.returncode}): {r.stderr.strip()}"

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            self.docker("network", "rm", "net0", check=False)
        self.stop()
        for sub in ("exec", "data"):  # mounted only in dockerd's own mount namespace, gone with it
            run("umount", "-R", str(self.dir / sub))
        for hier in Path("/sys/fs/cgroup").iterdir():
            d = hier / self.cgroup
            if d.is_dir():
                for child in sorted(d.iterdir(), reverse=True):
                    if child.is_dir():
                        os.rmdir(child)
                os.rmdir(d)


def ns_kernel(ns: str) -> dict[str, list[str]]:
    """What a host's kernel holds that the other host's Docker could change: IPv4 routes, the
    permanent FDB and neighbour entries, links, addresses."""
    def lines(*cmd: str) -> list[str]:
        return sorted(run(*cmd).stdout.splitlines())
    return {"routes": lines("ip", "-4", "-n", ns, "route", "show", "table", "all"),
            "fdb": [ln for ln in lines("bridge", "-n", ns, "fdb", "show") if "permanent" in ln],
            "neigh": lines("ip", "-n", ns, "neigh", "show", "nud", "permanent"),
            "links": lines("ip", "-n", ns, "-o", "link", "show"),
            "addrs": lines("ip", "-4", "-n", ns, "-o", "addr", "show")}


def sb_ping(ns: str, target: str) -> bool:
    return run("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", target).returncode == 0


def sb_fetch(ns: str, target: str) -> str:
    r = run("ip", "netns", "exec", ns, "busybox", "wget", "-q", "-O", "-", f"http://{target}/")
    return r.stdout if r.returncode == 0 else f"wget failed ({r.returncode}): {r.stderr.strip()}"


@contextlib.contextmanager
def docker_lab(backend: str, root: Path, **up: Any) -> Iterator[tuple[str, dict[str, Engine], Path]]:
    """A 3-host lab (core.up keywords: `up`) with a private dockerd on h1 and h2; all of it
    removed at the end, the root namespace's directories as they were."""
    for tool in ("dockerd", "containerd", "docker", "etcd", "nsenter", "unshare", "busybox",
                 *(("bird", "birdc") if backend == "bgp" else ())):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    old = os.environ.get("MUSLIN_LAB_DIR")
    os.environ["MUSLIN_LAB_DIR"] = str(root / "labs")
    name = "dk" + suffix(4)
    with root_ns_lock():
        made = [d for d in ROOT_DIRS if not os.path.isdir(d)]
        had_key = KEY_JSON.exists()
        engines: dict[str, Engine] = {}
        try:
            core.up(name, 3, backend, lease_ttl=4, resync=2.0, **up)
            PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
            for h in ("h1", "h2"):
                e = Engine(name, h, root)
                assert not e.sock.exists(), f"{e.sock} exists: refusing to interfere"
                engines[h] = e
                e.serve_plugin()
                e.start()
                import_busybox(root / "rootfs", e.env)
            yield name, engines, root
        finally:
            logs = "\n".join(f"== {h}\n{e.log()}" for h, e in engines.items())
            errors = []
            for e in engines.values():
                try:
                    e.cleanup()
                except Exception as ex:  # keep cleaning; reported below
                    errors.append(f"{e.host}: {ex}")
            try:  # the lab's logs outlive it, next to the dockerds' (core.down removes the lab dir)
                shutil.copytree(core.LabState.load(name).dir, root / "lab", ignore=shutil.ignore_patterns("etcd*"),
                                ignore_dangling_symlinks=True, dirs_exist_ok=True)
            except Exception:
                pass
            core.down(name)
            left = [e.sock for e in engines.values() if e.sock.exists()]
            for s in left:
                s.unlink()
            if not had_key:
                KEY_JSON.unlink(missing_ok=True)
            for d in made:
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            if old is None:
                os.environ.pop("MUSLIN_LAB_DIR", None)
            else:
                os.environ["MUSLIN_LAB_DIR"] = old
            assert not [n for n in core.netns_list() if n.startswith(f"mlab-{name}-")]
            assert not errors, errors
            assert not left, f"muslind left its plugin socket(s) {left}"
            assert not [d for d in made if os.path.isdir(d)], f"left directories {made}: {logs}"


def lease(name: str, host: str) -> str:
    return core.host_status(core.LabState.load(name), host)["subnet"]


def create(e: Engine, *how: str, check: bool = True) -> subprocess.CompletedProcess:
    return e.docker("network", "create", "-d", e.plugin, "--ipam-driver", e.plugin, *how,
                    "-o", "muslin.network=net0", "net0", check=check)

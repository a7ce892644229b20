"""Podman 4.3 with the CNI backend, private root/runroot/vfs (recipes.md), for real-client tests.

Everything lives under one temp dir; `destroy()` removes every container this Podman made,
its CNI cache entries in /var/lib/cni, and the temp dir. Podman runs in the root namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ping", "ip", "sleep", "cat", "nc", "ifconfig", "true", "echo", "grep", "httpd", "wget")
CNI_CACHE = Path("/var/lib/cni")


def free_port() -> int:
    """A TCP port nothing on this host listens on."""
    import socket

    for _ in range(100):
        port = random.randint(20000, 40000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def free_subnet() -> ipaddress.IPv4Network:
    """A random 10.X.Y.0/24 overlapping no route (any table) and no address on this machine."""
    taken: list[ipaddress.IPv4Network] = []
    out = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    out += subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for tok in out.split():
        try:
            n = ipaddress.ip_network(tok, strict=False)
        except ValueError:
            continue
        if isinstance(n, ipaddress.IPv4Network) and n.prefixlen > 0:
            taken.append(n)
    for _ in range(1000):
        cand = ipaddress.IPv4Network(f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24")
        if not any(cand.overlaps(t) for t in taken):
            return cand
    raise RuntimeError("no free 10.X.Y.0/24 subnet")


def nft_tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return {ln.strip() for ln in out.splitlines() if ln.startswith("table ")}


def iptables_save(binary: str = "iptables-save") -> str:
    if not shutil.which(binary):
        return ""
    return subprocess.run([binary], capture_output=True, text=True).stdout


def drop_empty_tables(before_tables: set[str]) -> None:
    """Remove an ip nat/filter table that was not there before and holds no rule now
    (iptables-nft leaves its base chains behind)."""
    save = iptables_save()
    for t in ("nat", "filter"):
        name = f"table ip {t}"
        if name in before_tables or name not in nft_tables():
            continue
        block = save.split(f"*{t}\n", 1)[1].split("COMMIT", 1)[0] if f"*{t}\n" in save else ""
        if not any(ln.startswith("-A ") for ln in block.splitlines()):
            subprocess.run(["nft", "delete", "table", "ip", t], capture_output=True)


class Podman:
    def __init__(self, base: Path, plugin_dirs: list[str], env: dict[str, str] | None = None,
                 backend: str = "cni", netns: str = "") -> None:
        """`netns`: run podman in that network namespace (nsenter --net, /sys and the cgroups
        stay the machine's): the bridges and routes its CNI plugins make are made there, not
        in the root namespace."""
        self.base = base
        self.netns = netns
        self.net_dir = base / "net.d"
        self.net_dir.mkdir(parents=True, exist_ok=True)
        (base / "tmp").mkdir(exist_ok=True)
        self.rootfs = base / "rootfs"
        self._make_rootfs()
        conf = base / "containers.conf"
        conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[network]\n"
            f'network_backend = "{backend}"\n'
            f"cni_plugin_dirs = {json.dumps(plugin_dirs)}\n"
            f'network_config_dir = "{self.net_dir}"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            'lock_type = "file"\n'
            f'tmp_dir = "{base / "tmp"}"\n'
            "[engine.runtimes]\n"
            'runc = ["/usr/sbin/runc"]\n'
        )
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), **(env or {})}
        self.ids: list[str] = []
        self.networks: list[str] = []

    def _make_rootfs(self) -> None:
        b = self.rootfs / "bin"
        b.mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, b / "busybox")
        for a in APPLETS:
            if not (b / a).exists():
                (b / a).symlink_to("busybox")
        for d in ("etc", "proc", "sys", "dev", "tmp", "run", "www"):
            (self.rootfs / d).mkdir(exist_ok=True)
        (self.rootfs / "www" / "index.html").write_text("hello from muslin\n")

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = ["podman", "--root", str(self.base / "root"), "--runroot", str(self.base / "run"),
               "--storage-driver", "vfs", *args]
        if self.netns:
            cmd = ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def add_network(self, conflist: dict) -> str:
        name = conflist["name"]
        (self.net_dir / f"{name}.conflist").write_text(json.dumps(conflist, indent=1))
        self.networks.append(name)
        return name

    def run(self, name: str, network: str, *opts: str, cmd: tuple[str, ...] = ("sleep", "600")) -> str:
        p = self("run", "-d", "--name", name, "--network", network, *opts, "--rootfs", str(self.rootfs),
                 "/bin/busybox", *cmd)
        cid = p.stdout.strip().splitlines()[-1]
        self.ids.append(cid)
        return cid

    def exec(self, name: str, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        return self("exec", name, "/bin/busybox", *cmd, check=check, timeout=60)

    def ipv4(self, name: str, ifname: str = "eth0") -> str:
        out = self.exec(name, "ip", "-4", "-o", "addr", "show", "dev", ifname, check=True).stdout
        return out.split("inet ")[1].split("/")[0]

    def mac(self, name: str, ifname: str = "eth0") -> str:
        out = self.exec(name, "cat", f"/sys/class/net/{ifname}/address", check=True).stdout
        return out.strip()

    def ping(self, name: str, addr: str) -> bool:
        return self.exec(name, "ping", "-c", "1", "-W", "2", addr).returncode == 0

    def rm(self, *names: str) -> None:
        self("rm", "-f", "-t", "0", *names, check=False)

    def destroy(self) -> None:
        """Remove every container (podman DELs their networks), the CNI cache entries, the dir."""
        self("rm", "-a", "-f", "-t", "0", check=False)
        for cid in self.ids:
            for d in (CNI_CACHE / "results", CNI_CACHE / "networks"):
                if d.is_dir():
                    for f in d.iterdir():
                        if cid in f.name:
                            f.unlink(missing_ok=True)
        for net in self.networks:
            for d in (CNI_CACHE / "networks" / net,):
                if d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.base, ignore_errors=True)

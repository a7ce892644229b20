"""Docker containers on two hosts sharing one Muslin cluster network (issue 15, items 1-2).

A 3-host lab (vxlan, host-gw, bgp). In the namespaces of h1 and h2 a private dockerd runs (own
--data-root, --exec-root, --pidfile, -H socket and cgroup parent, `--bridge=none
--iptables=false --ip6tables=false`), each finding its own host's muslind through its
own plugin name `muslin-<lab>-<host>` (a socket in /run/docker/plugins/). Containers on
h1 and h2 ping and fetch HTTP from each other, a CNI sandbox on h3 reaches both, a dockerd
restart on h2 changes nothing on h1, and `docker network rm` on h1 leaves h2's containers
working.

dockerd is started with `nsenter --net=/run/netns/HOST unshare --mount --propagation slave`,
not `ip netns exec`: `ip netns exec` mounts a fresh sysfs on /sys for the namespace, which
hides the cgroup hierarchies under /sys/fs/cgroup, and dockerd then refuses to start
("failed to start daemon: Devices cgroup isn't mounted"). The private mount namespace keeps
dockerd's own mounts (its exec-root's netns files, containers' root filesystems) out of the
machine's and lets them go with it.

dockerd touches root-namespace state (the plugin directory, /run/containerd/s for shim
sockets, cgroups, /etc/docker/key.json), so the whole module holds root_ns_lock().
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docker_util import IMAGE, import_busybox, root_ns_lock, stop_pid, wait_for
from nsutil import suffix
from muslin.lab import core

pytestmark = [pytest.mark.client, pytest.mark.kernel, pytest.mark.timeout(900)]

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


@pytest.fixture(scope="module", params=["vxlan", "host-gw", "bgp"])
def mh(request, tmp_path_factory):
    with docker_lab(request.param, tmp_path_factory.mktemp("dkmh")) as got:
        yield got


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


def test_docker_network_on_a_cluster_network_pool_is_the_cidr_addresses_the_lease(mh):
    name, eng, _ = mh
    h1, h2 = eng["h1"], eng["h2"]
    # No --subnet: Docker asks the IPAM for a pool before the driver sees -o muslin.network.
    r = create(h1, check=False)
    assert r.returncode != 0
    msg = r.stderr.strip().splitlines()[-1]
    assert (f"is this host's side of cluster network 'net0' (CIDR {CIDR})" in msg
            and f"pass --subnet {CIDR}" in msg and f"its lease {lease(name, 'h1')}" in msg), msg
    r = create(h1, "--subnet", lease(name, "h1"), check=False)  # the lease is not Docker's pool either
    assert r.returncode != 0 and f"the CIDR of cluster network 'net0' (give exactly {CIDR}" in r.stderr, r.stderr
    assert "net0" not in h1.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    create(h1, "--subnet", CIDR)
    create(h2, "--subnet", CIDR)
    for h, e in eng.items():
        ipam = json.loads(e.docker("network", "inspect", "-f", "{{json .IPAM.Config}}", "net0").stdout)
        lease_net = lease(name, h)
        assert ipam == [{"Subnet": CIDR}], (h, ipam)  # what Docker shows on every host
        e.docker("run", "-d", "--name", f"web-{h}", "--network", "net0", *ULIMIT, *(
            ("--restart", "always") if h == "h2" else ()), IMAGE, "httpd", "-f", "-p", "80", "-h", "/www")
        ip = e.ip(f"web-{h}")
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(lease_net), (h, ip, lease_net)
        inside = e.exec(f"web-{h}", "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert f"{ip}/24" in inside, inside  # on-link is the host's lease; the rest of the CIDR via the gateway
        route = e.exec(f"web-{h}", "ip", "route").stdout
        assert f"default via {lease_net.replace('.0/24', '.1')}" in route, route


def test_containers_on_two_hosts_ping_and_fetch_http(mh):
    _, eng, _ = mh
    h1, h2 = eng["h1"], eng["h2"]
    a, b = h1.ip("web-h1"), h2.ip("web-h2")
    assert wait_for(lambda: h1.ping("web-h1", b), 30, "h1 -> h2 ping")
    assert h2.ping("web-h2", a)
    assert h1.fetch("web-h1", b) == "hello from muslin\n"
    assert h2.fetch("web-h2", a) == "hello from muslin\n"


def test_a_cni_sandbox_on_the_third_host_reaches_both(mh):
    name, eng, _ = mh
    sb = core.sandbox(name, "h3", "c")
    a, b = eng["h1"].ip("web-h1"), eng["h2"].ip("web-h2")
    assert wait_for(lambda: sb_ping(sb["netns"], a) and sb_ping(sb["netns"], b), 30, "h3 sandbox -> containers")
    assert sb_fetch(sb["netns"], a) == "hello from muslin\n" == sb_fetch(sb["netns"], b)
    c = sb["address"].split("/")[0]
    assert eng["h1"].ping("web-h1", c) and eng["h2"].ping("web-h2", c)


def test_a_dockerd_restart_on_one_host_changes_nothing_on_the_other(mh):
    name, eng, _ = mh
    h1, h2 = eng["h1"], eng["h2"]
    st = core.LabState.load(name)
    sb = st.sandboxes["c"]["netns"]
    before = ns_kernel(h1.ns)
    h2.stop()
    assert sb_ping(sb, h1.ip("web-h1")) and h1.ping("web-h1", sb_addr(st))
    h2.start()
    b = wait_for(lambda: h2.docker("inspect", "-f", "{{.State.Running}}", "web-h2", check=False).stdout.strip()
                 == "true" and h2.ip("web-h2"), 60, "web-h2 restarted by its policy")
    assert wait_for(lambda: h1.ping("web-h1", b), 30, "h1 -> restarted h2 container")
    assert h1.fetch("web-h1", b) == "hello from muslin\n" and sb_fetch(sb, b) == "hello from muslin\n"
    assert ns_kernel(h1.ns) == before


def sb_addr(st: core.LabState) -> str:
    return st.sandboxes["c"]["address"].split("/")[0]


def test_docker_network_rm_on_one_host_leaves_the_other_working(mh):
    name, eng, _ = mh
    h1, h2 = eng["h1"], eng["h2"]
    st = core.LabState.load(name)
    sb = st.sandboxes["c"]["netns"]
    b = h2.ip("web-h2")
    before = ns_kernel(h2.ns)
    h1.docker("rm", "-f", "web-h1")
    h1.docker("network", "rm", "net0")
    assert "net0" not in h1.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert "mus-net0" in run("ip", "-n", h1.ns, "-o", "link", "show").stdout  # the agent's side stays
    assert sb_ping(sb, b) and sb_fetch(sb, b) == "hello from muslin\n"
    assert h2.ping("web-h2", sb_addr(st))
    assert ns_kernel(h2.ns) == before
    # and h1 can join again
    create(h1, "--subnet", CIDR)
    h1.docker("run", "-d", "--name", "web-h1b", "--network", "net0", *ULIMIT, IMAGE, "httpd", "-f", "-p", "80",
              "-h", "/www")
    assert wait_for(lambda: h1.ping("web-h1b", b), 30, "h1 (joined again) -> h2")
    assert h2.fetch("web-h2", h1.ip("web-h1b")) == "hello from muslin\n"


CIDR6 = "fd00:10::/48"


@pytest.fixture(scope="module")
def mh6(tmp_path_factory):
    with docker_lab("vxlan", tmp_path_factory.mktemp("dkmh6"), cidr6=CIDR6) as got:
        yield got


def test_docker_on_a_dual_stack_cluster_network(mh6):
    """Docker's pools are both cluster CIDRs (`--ipv6 --subnet CIDR --subnet CIDR6`); each
    container has an address of each family from its host's leases, and the containers on
    h1 and h2 and a sandbox on h3 reach each other over IPv4 and IPv6, HTTP over IPv6 too."""
    name, eng, _ = mh6
    st = core.LabState.load(name)
    r = create(eng["h1"], "--subnet", CIDR, check=False)
    assert r.returncode != 0 and f"pass --subnet {CIDR} --subnet {CIDR6} with --ipv6" in r.stderr, r.stderr
    six: dict[str, str] = {}
    for h, e in eng.items():
        create(e, "--ipv6", "--subnet", CIDR, "--subnet", CIDR6)
        e.docker("run", "-d", "--name", f"web-{h}", "--network", "net0", *ULIMIT, IMAGE, "httpd", "-f", "-p", "80",
                 "-h", "/www")
        nets = json.loads(e.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", f"web-{h}").stdout)
        six[h] = nets["net0"]["GlobalIPv6Address"]
        s = core.host_status(st, h)
        assert ipaddress.ip_address(six[h]) in ipaddress.ip_network(s["subnet6"]), (h, six[h], s)
        assert ipaddress.ip_address(e.ip(f"web-{h}")) in ipaddress.ip_network(s["subnet"])
    h1, h2 = eng["h1"], eng["h2"]
    assert wait_for(lambda: h1.ping("web-h1", six["h2"]), 30, "h1 -> h2 ping6")
    assert h2.ping("web-h2", six["h1"]) and h1.ping("web-h1", h2.ip("web-h2"))
    assert h1.fetch("web-h1", f"[{six['h2']}]") == "hello from muslin\n"
    sb = core.sandbox(name, "h3", "c")
    assert wait_for(lambda: sb_ping(sb["netns"], six["h1"]) and sb_ping(sb["netns"], six["h2"]), 30,
                    "h3 sandbox -> containers over IPv6")
    assert h2.ping("web-h2", sb["address6"].split("/")[0])

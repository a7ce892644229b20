"""Virtual multi-host clusters out of network namespaces on one machine.

A lab NAME is: an underlay namespace `mlab-NAME-ul` holding a bridge (10.250.0.254/24,
a fixed MAC so it does not change as hosts join) and etcd on that address; N host namespaces `mlab-NAME-hI` (eth0 = 10.250.0.I/24 on the
underlay bridge), each running one Muslin agent with its own state dir; sandbox
namespaces `mlab-NAME-s-SANDBOX` attached to a host's side of the cluster network.
Hosts are made in parallel. Every host's eth0 has a fixed MAC too, and every host knows
etcd's and every other host's underlay MAC as permanent neighbour entries: the kernel's
neighbour table is one for the whole machine (1,024 ARP entries by default, shared with
every other lab and test), and a host that cannot add an entry cannot even reach etcd.
Nothing is made in the root namespace. Every namespace, process and file is recorded in
<lab dir>/NAME.json; `down` removes them all, also after a crash (by exact name pattern).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from muslin.backends.model import DEFAULT_SUBNET_TTL, ClusterConfig, stable_mac
from muslin.backends.registry import get_backend
from muslin.lab import bytecode
from muslin.model.errors import Conflict, Exhausted, Invalid, MuslinError, NotFound, Unavailable

UNDERLAY = ipaddress.IPv4Network("10.250.0.0/24")
UNDERLAY6 = ipaddress.IPv6Network("fd00:250::/64")  # the hosts' IPv6 underlay in a lab with IPv6
ETCD_IP = "10.250.0.254"
ETCD_PORT = 2379
LAB_NAME = re.compile(r"[a-z0-9]{1,16}")  # names are checked with fullmatch
SANDBOX_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.]{0,31}")
MAX_HOSTS = 200
ETCD_USER = "muslin"
PARALLEL = 16  # hosts made at once
METRICS = "127.0.0.1:9473"  # each host's muslind: /metrics and /topology on its namespace's own loopback


def lab_dir() -> Path:
    return Path(os.environ.get("MUSLIN_LAB_DIR") or "/run/muslin/lab")


def ns_ul(name: str) -> str:
    return f"mlab-{name}-ul"


def ns_host(name: str, host: str) -> str:
    return f"mlab-{name}-{host}"


def ns_sandbox(name: str, sandbox: str) -> str:
    return f"mlab-{name}-s-{sandbox}"


def _ns_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"mlab-{re.escape(name)}-(ul|h\d+|s-[A-Za-z0-9_.]+)")


def check_lab_name(name: str) -> str:
    if not LAB_NAME.fullmatch(name or ""):
        raise Invalid(f"lab name {name!r} is not valid: use 1-16 lowercase letters or digits")
    return name


def _run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise Unavailable(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip().splitlines()[-1:] or ['failed']}")
    return r


def netns_list() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass
class LabState:
    name: str
    backend: str = "vxlan"
    network: str = "net0"
    cidr: str = "10.244.0.0/16"
    host_prefix: int = 24
    hosts: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # "etcd", "agent-h1", ...
    sandboxes: dict[str, dict[str, str]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return lab_dir() / self.name

    @property
    def path(self) -> Path:
        return lab_dir() / f"{self.name}.json"

    @property
    def tls(self) -> bool:
        return bool(self.settings.get("tls"))

    @property
    def store_url(self) -> str:
        return f"{'etcds' if self.tls else 'etcd'}://{ETCD_IP}:{ETCD_PORT}"

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    def etcd_options(self) -> Any:
        """How the lab's agents reach etcd: with --tls, its CA, a client certificate and a user."""
        from muslin.store.base import EtcdOptions
        if not self.tls:
            return EtcdOptions()
        d = self.pki_dir
        return EtcdOptions(ca=str(d / "ca.pem"), cert=str(d / "client.pem"), key=str(d / "client.key"),
                           user=ETCD_USER, password=(d / "password").read_text())

    def etcd_flags(self) -> list[str]:
        """The same as muslind / `muslin cluster` flags."""
        if not self.tls:
            return []
        o, d = self.etcd_options(), self.pki_dir
        return ["--etcd-ca", o.ca, "--etcd-cert", o.cert, "--etcd-key", o.key, "--etcd-user", o.user,
                "--etcd-password-file", str(d / "password")]

    def host_dir(self, host: str) -> Path:
        return self.dir / host

    def network_of(self, host: str) -> str:
        return self.settings.get("host_networks", {}).get(host, self.network)

    def save(self) -> None:
        lab_dir().mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        tmp.replace(self.path)

    @classmethod
    def load(cls, name: str) -> LabState:
        p = lab_dir() / f"{check_lab_name(name)}.json"
        try:
            return cls(**json.loads(p.read_text()))
        except FileNotFoundError:
            raise NotFound(f"lab {name!r} does not exist (no {p})") from None
        except (ValueError, TypeError) as e:
            raise Invalid(f"lab state file {p} is damaged: {e}") from None


# -- processes -------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_pid(pid: int, sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
    """Signal one process by PID and wait for it to go (SIGKILL after `wait`)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    end = time.monotonic() + wait
    while time.monotonic() < end:
        _reap(pid)
        if not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(100):
        _reap(pid)
        if not _alive(pid):
            return
        time.sleep(0.02)


def _spawn(ns: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env)
    return p.pid


def make_pki(st: LabState) -> None:
    """--tls: a CA, etcd's certificate for its address, the agents' client certificate, and
    the password of the etcd user the agents log in as."""
    import secrets
    from muslin.lab import pki
    pki.make(st.pki_dir, (ETCD_IP, "127.0.0.1"))
    pw = st.pki_dir / "password"
    pw.write_text(secrets.token_hex(12))
    pw.chmod(0o600)


def start_etcd(st: LabState) -> int:
    scheme = "https" if st.tls else "http"
    c = f"{scheme}://{ETCD_IP}:{ETCD_PORT}"
    p = f"http://{ETCD_IP}:2380"
    d = st.pki_dir
    tls = ["--cert-file", str(d / "server.pem"), "--key-file", str(d / "server.key"), "--trusted-ca-file",
           str(d / "ca.pem"), "--client-cert-auth"] if st.tls else []
    pid = _spawn(ns_ul(st.name), ["etcd", "--name", "lab", "--data-dir", str(st.dir / "etcd"),
                                  "--listen-client-urls", c, "--advertise-client-urls", c,
                                  "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                                  "--initial-cluster", f"lab={p}", *tls], st.dir / "etcd.log")
    st.pids["etcd"] = pid
    st.save()
    return pid


def _etcd_health(url: str, opts: Any = None) -> bool:
    import ssl
    import urllib.request
    ctx = None
    if opts is not None and opts.tls:
        ctx = ssl.create_default_context(cafile=opts.ca)
        ctx.load_cert_chain(opts.cert, opts.key)
    try:
        with urllib.request.urlopen(url + "/health", timeout=1, context=ctx) as r:
            return b"true" in r.read()
    except OSError:
        return False


def enable_auth(st: LabState) -> None:
    """--tls: etcd's root user, the agents' user with read-write on every key, authentication on."""
    o = st.etcd_options()
    ctl = ["ip", "netns", "exec", ns_ul(st.name), "etcdctl", "--endpoints", f"https://{ETCD_IP}:{ETCD_PORT}",
           "--cacert", o.ca, "--cert", o.cert, "--key", o.key]
    for args in (["user", "add", f"root:{o.password}-root"], ["user", "grant-role", "root", "root"],
                 ["user", "add", f"{ETCD_USER}:{o.password}"], ["role", "add", ETCD_USER],
                 ["role", "grant-permission", ETCD_USER, "--prefix=true", "readwrite", ""],
                 ["user", "grant-role", ETCD_USER, ETCD_USER], ["auth", "enable"]):
        _run(*ctl, *args)


def wait_etcd(st: LabState, timeout: float = 20) -> None:
    from muslin.dataplane.nsexec import run_in_netns
    end = time.monotonic() + timeout
    url = f"{'https' if st.tls else 'http'}://{ETCD_IP}:{ETCD_PORT}"
    while time.monotonic() < end:
        if run_in_netns(f"/run/netns/{ns_ul(st.name)}", _etcd_health, url, st.etcd_options()):
            return
        if not _alive(st.pids.get("etcd", 0)):
            raise Unavailable(f"lab {st.name}: etcd exited, see {st.dir / 'etcd.log'}")
        time.sleep(0.2)
    raise Unavailable(f"lab {st.name}: etcd did not become healthy in {timeout:.0f} s")


def agent_cmd(st: LabState, host: str) -> list[str]:
    """One muslind per host: the cluster agent, and the CNI agent socket for muslin-cni there."""
    return [sys.executable, "-m", "muslin.control.daemon", "--docker-socket", "",
            "--agent-socket", str(st.host_dir(host) / "muslind.sock"), "--state-dir", str(st.host_dir(host)),
            "--reconcile-interval", "0", "--cluster-store", st.store_url, "--cluster-network", st.network_of(host),
            "--hostname", host, "--underlay-dev", "eth0", "--resync", str(st.settings.get("resync", 10.0)),
            "--metrics-address", METRICS, "--config", "", *st.etcd_flags(), "--resolv-conf",
            str(st.dir / "resolv.conf")]


def start_agent(st: LabState, host: str, extra: tuple[str, ...] = ()) -> int:
    resolv = st.dir / "resolv.conf"  # the lab's upstream resolvers: none unless you add some
    if not resolv.exists():
        resolv.write_text("# upstream DNS servers of the lab's hosts (muslind --resolv-conf): none\n")
    pid = _spawn(ns_host(st.name, host), agent_cmd(st, host) + list(extra), st.dir / f"{host}.log",
                 bytecode.env(st.dir / "pycache"))
    st.pids[f"agent-{host}"] = pid
    st.save()
    return pid


def _lab_host(name: str, host: str) -> LabState:
    st = LabState.load(name)
    if host not in st.hosts:
        raise NotFound(f"lab {name} has no host {host!r} (hosts: {', '.join(st.hosts)})")
    return st


def kill_agent(name: str, host: str, sig: int = signal.SIGKILL) -> int:
    """Signal a host's agent (default SIGKILL: a crash) and wait for it to go; returns its PID
    (0 if none ran). SIGTERM stops it keeping everything, SIGUSR1 makes it leave."""
    st = _lab_host(name, host)
    pid = st.pids.get(f"agent-{host}", 0)
    if pid and _alive(pid) and "muslin" in _cmd_of(pid):
        kill_pid(pid, sig, wait=20 if sig == signal.SIGUSR1 else 5)
        return pid
    _reap(pid)
    return 0


def restart_agent(name: str, host: str, sig: int = signal.SIGTERM, timeout: float = 30,
                  extra: tuple[str, ...] = ()) -> int:
    """Stop a host's agent if it runs (with `sig`), start a new one with the same state dir
    (and the muslind flags in `extra`, e.g. a Docker plugin socket), and wait until it has
    its lease and sees its peers; returns the new PID."""
    kill_agent(name, host, sig)
    st = LabState.load(name)
    pid = start_agent(st, host, extra)
    end = time.monotonic() + timeout
    while True:  # its status file is written after its first reconcile (peers from etcd)
        s = host_status(st, host)
        if s.get("pid") == pid and s.get("subnet") and s.get("reconciles", 0) >= 1:
            return pid
        if not _alive(pid):
            _reap(pid)
            raise Unavailable(f"lab {name}: the agent of {host} exited: {_last_line(st.dir / f'{host}.log')}")
        if time.monotonic() > end:
            raise Unavailable(f"lab {name}: the agent of {host} did not come back in {timeout:.0f} s")
        time.sleep(0.2)


def host_status(st: LabState, host: str) -> dict[str, Any]:
    p = st.host_dir(host) / "cluster" / f"{st.network_of(host)}.status.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def _in_ul(st: LabState, fn: Callable[..., Any], *args: Any) -> Any:
    from muslin.dataplane.nsexec import run_in_netns
    return run_in_netns(f"/run/netns/{ns_ul(st.name)}", fn, *args)


def _init_config(url: str, cfg: dict[str, Any], opts: Any = None) -> None:
    from muslin.control.agent import init_config
    from muslin.store import open_store
    init_config(open_store(url, opts), ClusterConfig.from_dict(cfg))


def _hosts(url: str, network: str, opts: Any = None) -> tuple[dict[str, Any], list[str]]:
    from muslin.control.agent import list_alive, list_hosts
    from muslin.store import etcd_endpoints
    from muslin.store.etcd import EtcdStore
    endpoints, tls = etcd_endpoints(url)
    s = EtcdStore(endpoints, timeout=2, options=opts, tls=tls)
    hosts = {h: {**rec.to_dict(), "lease": lease} for h, (rec, lease) in list_hosts(s, network).items()}
    return hosts, sorted(list_alive(s, network))


def store_hosts(st: LabState) -> dict[str, Any]:
    """The host records in etcd (present while a host holds its subnet lease)."""
    return _in_ul(st, _hosts, st.store_url, st.network, st.etcd_options())[0]


def store_alive(st: LabState) -> list[str]:
    """The hosts whose agent holds its liveness key."""
    return _in_ul(st, _hosts, st.store_url, st.network, st.etcd_options())[1]


# -- up / down -----------------------------------------------------------------------------

def underlay_mac(name: str) -> str:
    return stable_mac(f"mlab/{name}/br0")


def validate_up(name: str, hosts: int, cfg: ClusterConfig) -> None:
    """What `up` refuses before it makes anything (`cfg`: validated)."""
    from muslin.control.agent import check_underlay, probe_backend

    check_underlay(cfg, [str(UNDERLAY), str(UNDERLAY6)])
    probe_backend(get_backend(cfg.backend))  # Unsupported before anything is made
    if cfg.capacity() < hosts:
        small = min(cfg.families(), key=lambda f: 1 << (f[1] - f[0].prefixlen))
        raise Exhausted(f"cluster CIDR {small[0]} holds only {cfg.capacity()} /{small[1]} host subnets, "
                        f"{hosts} hosts asked")
    if (lab_dir() / f"{name}.json").exists() or ns_ul(name) in netns_list():
        raise Conflict(f"lab {name!r} already exists (run `muslin lab down {name}` first)")


def up(name: str, hosts: int, backend: str, cidr: str = "10.244.0.0/16", host_prefix: int = 24,
       network: str = "net0", vni: int = 1, lease_ttl: int = 10, resync: float = 10.0,
       route_reflectors: tuple[str, ...] = (), progress: Callable[[str], None] | None = None,
       timeout: float | None = None, subnet_ttl: int = DEFAULT_SUBNET_TTL, tls: bool = False,
       options: dict[str, Any] | None = None, cidr6: str = "", host_prefix6: int = 64) -> LabState:
    """Make the lab and wait until every host holds a lease and sees every peer, and has a
    route to every peer's subnet(s) (bgp: installed by BIRD). `timeout`: default 30 s + 1 s
    per host. A network with IPv6 (`cidr6`, an IPv6 `cidr`, or vxlan over IPv6) gives the
    hosts IPv6 underlay addresses too (UNDERLAY6)."""
    say = progress or (lambda m: None)
    check_lab_name(name)  # the checks in the order they always ran: the name, the backend, the count, the config
    get_backend(backend)
    if not 1 <= hosts <= MAX_HOSTS:
        raise Invalid(f"--hosts {hosts}: a lab has 1 to {MAX_HOSTS} hosts")
    cfg = ClusterConfig(network, cidr, host_prefix, backend, vni=vni, lease_ttl=lease_ttl, subnet_ttl=subnet_ttl,
                        route_reflectors=tuple(route_reflectors), options=options or {}, cidr6=cidr6,
                        host_prefix6=host_prefix6).validate()
    validate_up(name, hosts, cfg)
    ipv6 = get_backend(backend).wants_underlay6(cfg)
    st = LabState(name, backend, network, cidr, host_prefix, settings={"resync": resync, "vni": vni,
                                                                        "lease_ttl": lease_ttl,
                                                                        "subnet_ttl": subnet_ttl, "tls": tls,
                                                                        "ipv6": ipv6})
    shutil.rmtree(st.dir, ignore_errors=True)
    st.dir.mkdir(parents=True)
    st.save()
    warming = None
    try:
        say("underlay")
        ul = ns_ul(name)
        _run("ip", "netns", "add", ul)
        st.namespaces.append(ul)
        st.save()
        _run("ip", "-n", ul, "link", "set", "lo", "up")
        # a fixed MAC: a bridge without one takes its lowest port's, which changes as hosts join
        _run("ip", "-n", ul, "link", "add", "br0", "address", underlay_mac(name), "type", "bridge")
        _run("ip", "-n", ul, "addr", "add", f"{ETCD_IP}/{UNDERLAY.prefixlen}", "dev", "br0")
        _run("ip", "-n", ul, "link", "set", "br0", "up")
        say("etcd")
        if tls:
            make_pki(st)
        start_etcd(st)
        warming = bytecode.start_warming(st.dir / "pycache")  # None unless this environment writes no .pyc
        say(f"{hosts} hosts")
        new = _make_hosts(st, hosts, spawn=False)  # while etcd starts
        wait_etcd(st)
        bytecode.finish_warming(warming)
        if st.tls:
            enable_auth(st)
        _in_ul(st, _init_config, st.store_url, cfg.to_dict(), st.etcd_options())
        _start_agents(st, new)
        say("waiting for leases and routes")
        wait_converged(st, wait_for(hosts, timeout))
        return st
    except BaseException:
        bytecode.finish_warming(warming, 0)  # stopped, if still at it
        logs = _tail_logs(st)
        down(name)
        if logs:
            raise Unavailable(f"lab {name} did not come up: {logs}") from None
        raise


def list_labs() -> list[dict[str, Any]]:
    """Every lab with a state file: name, backend, network, hosts, sandboxes, etcd running."""
    out = []
    d = lab_dir()
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        if not LAB_NAME.match(p.stem):
            continue
        try:
            st = LabState.load(p.stem)
        except MuslinError:
            continue
        agents = [h for h in st.hosts if _alive(st.pids.get(f"agent-{h}", 0))]
        out.append({"name": st.name, "backend": st.backend, "network": st.network, "cidr": st.cidr,
                    "hosts": st.hosts, "agents_running": agents, "sandboxes": sorted(st.sandboxes),
                    "etcd": st.store_url, "etcd_running": _alive(st.pids.get("etcd", 0)), "tls": st.tls})
    return out


def wait_for(hosts: int, timeout: float | None) -> float:
    """How long to wait for `hosts` hosts to converge: given, or 30 s + 1 s per host."""
    return timeout if timeout is not None else 30.0 + hosts


def host_mac(name: str, host: str) -> str:
    return stable_mac(f"mlab/{name}/{host}/eth0")


def host_ip6(host: str) -> str:
    return str(UNDERLAY6.network_address + int(host[1:]))


def host_ip(host: str) -> str:
    return str(UNDERLAY.network_address + int(host[1:]))


def _free_indexes(st: LabState, n: int) -> list[int]:
    used = {int(h[1:]) for h in st.hosts}
    free = [i for i in range(1, 254) if i not in used][:n]
    if len(free) < n or len(st.hosts) + n > MAX_HOSTS:
        raise Exhausted(f"lab {st.name} has {len(st.hosts)} hosts; at most {MAX_HOSTS}")
    return free


def _make_hosts(st: LabState, n: int, network: str = "", spawn: bool = True) -> list[str]:
    """n more hosts, made in parallel, and their agents started (unless not `spawn`);
    returns their names. Each knows etcd's and every other host's underlay MAC (permanent
    entries), and every other host learns its."""
    new = [f"h{i}" for i in _free_indexes(st, n)]
    for h in new:
        st.namespaces.append(ns_host(st.name, h))
        st.hosts.append(h)
        if network:
            st.settings.setdefault("host_networks", {})[h] = network
    st.save()
    with ThreadPoolExecutor(min(PARALLEL, len(new))) as pool:
        list(pool.map(lambda h: _build_host(st, h), new))
        old = [h for h in st.hosts if h not in new]
        list(pool.map(lambda h: _neighbours(st, h, new, add=True), old))
    if spawn:
        _start_agents(st, new)
    return new


def _start_agents(st: LabState, hosts: list[str]) -> None:
    with ThreadPoolExecutor(min(PARALLEL, len(hosts))) as pool:
        env = bytecode.env(st.dir / "pycache")  # this environment writes no .pyc: the lab's own cache
        pids = list(pool.map(lambda h: _spawn(ns_host(st.name, h), agent_cmd(st, h), st.dir / f"{h}.log", env),
                             hosts))
    for h, pid in zip(hosts, pids):
        st.pids[f"agent-{h}"] = pid
    st.save()


def _build_host(st: LabState, h: str) -> None:
    ul, ns = ns_ul(st.name), ns_host(st.name, h)
    _run("ip", "netns", "add", ns)
    _run("ip", "-n", ul, "link", "add", h, "type", "veth", "peer", "name", "eth0", "address", host_mac(st.name, h),
         "netns", ns)
    _run("ip", "-n", ul, "link", "set", h, "master", "br0", "up")
    v6 = [f"addr add {host_ip6(h)}/{UNDERLAY6.prefixlen} dev eth0 nodad"] if st.settings.get("ipv6") else []
    _batch(ns, ["link set lo up", f"addr add {host_ip(h)}/{UNDERLAY.prefixlen} dev eth0", *v6, "link set eth0 up"])
    _neighbours(st, h, [x for x in st.hosts if x != h], add=True, etcd=True)


def _neighbours(st: LabState, host: str, others: list[str], add: bool, etcd: bool = False) -> None:
    """Permanent neighbour entries on `host`'s eth0 for the other hosts (and etcd)."""
    ips = [host_ip] + ([host_ip6] if st.settings.get("ipv6") else [])
    lines = [f"neigh replace {ip(o)} lladdr {host_mac(st.name, o)} dev eth0 nud permanent" if add
             else f"neigh del {ip(o)} dev eth0" for o in others if o != host for ip in ips]
    if etcd:
        lines.append(f"neigh replace {ETCD_IP} lladdr {underlay_mac(st.name)} dev eth0 nud permanent")
    _batch(ns_host(st.name, host), lines, check=add)


def _batch(ns: str, lines: list[str], check: bool = True) -> None:
    if not lines:
        return
    r = subprocess.run(["ip", "-n", ns, "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise Unavailable(f"ip -n {ns} -batch: {(r.stderr or r.stdout).strip().splitlines()[-1:] or ['failed']}")


def add_network(name: str, network: str, backend: str, vni: int, cidr: str = "", host_prefix: int = 0) -> None:
    """Store the config of another cluster network on the lab's etcd."""
    st = LabState.load(name)
    cfg = ClusterConfig(network, cidr or st.cidr, host_prefix or st.host_prefix, backend, vni=vni,
                        lease_ttl=st.settings.get("lease_ttl", 10),
                        subnet_ttl=st.settings.get("subnet_ttl", DEFAULT_SUBNET_TTL)).validate()
    _in_ul(st, _init_config, st.store_url, cfg.to_dict(), st.etcd_options())


def add_host(name: str, network: str = "") -> str:
    """One more host on the underlay, its agent joining `network` (default: the lab's)."""
    return add_hosts(name, 1, network)[0]


def add_hosts(name: str, n: int = 1, network: str = "", wait: bool = False,
              timeout: float | None = None) -> list[str]:
    """n more hosts (made in parallel); with `wait`, until they and their peers converge."""
    st = LabState.load(name)
    if n < 1:
        raise Invalid(f"add-host: --count {n} must be at least 1")
    new = _make_hosts(st, n, network)
    if wait:
        wait_converged(st, wait_for(len(st.hosts), timeout))
    return new


def remove_host(name: str, host: str, wait: bool = True) -> None:
    """Take a host out of a running lab: its sandboxes, its agent leaving the cluster
    network (peers drop its routes at once), its namespace, its peers' entries for it."""
    st = _lab_host(name, host)
    for sb, info in list(st.sandboxes.items()):
        if info["host"] == host:
            remove_sandbox(name, sb)
    st = LabState.load(name)
    ns = ns_host(name, host)
    if not kill_agent(name, host, signal.SIGUSR1):  # not running: leave from here
        _run("ip", "netns", "exec", ns, sys.executable, "-m", "muslin.control.agent", "leave", "--store", st.store_url,
             "--network", st.network_of(host), "--state-dir", str(st.host_dir(host)), "--hostname", host,
             *st.etcd_flags(), check=False, timeout=60)
    wg = host_status(st, host).get("companions", {}).get("wireguard", {}).get("ifname", "")
    for p in _run("ip", "netns", "pids", ns, check=False).stdout.split():
        kill_pid(int(p), signal.SIGKILL, wait=2)
    _run("ip", "netns", "del", ns, check=False)
    if wg:
        (Path("/var/run/wireguard") / f"{wg}.sock").unlink(missing_ok=True)
    st = LabState.load(name)
    st.hosts.remove(host)
    if ns in st.namespaces:
        st.namespaces.remove(ns)
    st.pids.pop(f"agent-{host}", None)
    st.settings.get("host_networks", {}).pop(host, None)
    st.save()
    shutil.rmtree(st.host_dir(host), ignore_errors=True)
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(lambda h: _neighbours(st, h, [host], add=False), st.hosts))
    if wait and st.hosts:
        wait_converged(st, wait_for(len(st.hosts), None))


def _tail_logs(st: LabState) -> str:
    for h in st.hosts:
        p = st.dir / f"{h}.log"
        try:
            lines = [ln for ln in p.read_text().splitlines() if "error" in ln.lower()]
        except OSError:
            continue
        if lines:
            return f"{h}: {lines[-1].strip()}"
    return ""


def wait_converged(st: LabState, timeout: float = 60, hosts: list[str] | None = None) -> None:
    """Every (given) host's agent holds a lease and sees every other host, and its kernel
    has a route to every other host's subnet (whoever installs it: the agent, or BIRD)."""
    hosts = hosts or st.hosts
    end = time.monotonic() + timeout
    pending = list(hosts)
    with ThreadPoolExecutor(PARALLEL) as pool:
        while True:
            statuses = {h: host_status(st, h) for h in st.hosts}
            waiting = []
            for h in pending:
                s = statuses[h]
                pid = st.pids.get(f"agent-{h}", 0)
                if not _alive(pid):
                    _reap(pid)
                    raise Unavailable(f"lab {st.name}: the agent of {h} exited: {_last_line(st.dir / f'{h}.log')}")
                same = [x for x in st.hosts if st.network_of(x) == st.network_of(h)]
                if s.get("pid") != pid or not s.get("subnet") or \
                        sorted(s.get("peers", {})) != sorted(x for x in same if x != h):
                    waiting.append(h)
            if not waiting:  # everyone sees everyone: are the routes in?
                def missing(h: str) -> bool:
                    want = {s for x in st.hosts if x != h and st.network_of(x) == st.network_of(h)
                            for s in (statuses[x].get("subnet"), statuses[x].get("subnet6")) if s}
                    return not want <= _routed(st, h)
                waiting = [h for h, m in zip(pending, pool.map(missing, pending)) if m]
            if not waiting:
                return
            pending = waiting
            if time.monotonic() > end:
                raise Unavailable(f"lab {st.name}: hosts {', '.join(pending)} did not converge in {timeout:.0f} s")
            time.sleep(0.2)


def _routed(st: LabState, host: str) -> set[str]:
    """The destinations of the routes in the host's main table (IPv6 too in a lab with IPv6)."""
    out = set()
    for fam in ("-4", "-6") if st.settings.get("ipv6") else ("-4",):
        r = _run("ip", "-n", ns_host(st.name, host), fam, "-o", "route", "show", "table", "main", check=False)
        out |= {str(ipaddress.ip_network(line.split()[0], strict=False)) for line in r.stdout.splitlines()
                if line.strip() and line.split()[0] not in ("default", "unreachable", "blackhole", "anycast")}
    return out


def _last_line(p: Path) -> str:
    try:
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
        return lines[-1] if lines else "no output"
    except OSError:
        return "no log"


def down(name: str) -> list[str]:
    """Remove every namespace, process and file of the lab. Idempotent."""
    check_lab_name(name)
    removed = []
    try:
        st: LabState | None = LabState.load(name)
    except (NotFound, Invalid):
        st = None
    if st is not None:
        for key, pid in st.pids.items():
            if _alive(pid) and _cmd_of(pid) and ("muslin" in _cmd_of(pid) or "etcd" in _cmd_of(pid)):
                kill_pid(pid, signal.SIGTERM, wait=3)
            _reap(pid)
    sockets = []
    if st is not None:
        for h in st.hosts:
            wg = host_status(st, h).get("companions", {}).get("wireguard", {}).get("ifname", "")
            if wg:
                sockets.append(Path("/var/run/wireguard") / f"{wg}.sock")
    pat = _ns_pattern(name)
    for ns in netns_list():
        if not pat.fullmatch(ns):
            continue
        pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
        for p in pids:
            kill_pid(int(p), signal.SIGKILL, wait=2)
        _run("ip", "netns", "del", ns, check=False)
        _sandbox_resolv(ns, None)
        removed.append(ns)
    for sock in sockets:  # a killed wireguard-go leaves its UAPI socket behind
        sock.unlink(missing_ok=True)
    shutil.rmtree(lab_dir() / name, ignore_errors=True)
    (lab_dir() / f"{name}.json").unlink(missing_ok=True)
    return removed


def _cmd_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# -- sandboxes -----------------------------------------------------------------------------

def sandbox(name: str, host: str, sb: str, aliases: tuple[str, ...] = (), labels: tuple[str, ...] = (),
            namespace: str = "default", expose: tuple[str, ...] = ()) -> dict[str, str]:
    st = LabState.load(name)
    if host not in st.hosts:
        raise NotFound(f"lab {name} has no host {host!r} (hosts: {', '.join(st.hosts)})")
    if not SANDBOX_NAME.fullmatch(sb or ""):
        raise Invalid(f"sandbox name {sb!r} is not valid: use up to 32 letters, digits, '_' or '.'")
    if sb in st.sandboxes:
        raise Conflict(f"lab {name} already has a sandbox {sb!r} (on {st.sandboxes[sb]['host']})")
    ns = ns_sandbox(name, sb)
    _run("ip", "netns", "add", ns)
    try:
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        r = _run("ip", "netns", "exec", ns_host(name, host), sys.executable, "-m", "muslin.control.agent", "attach",
                 "--state-dir", str(st.host_dir(host)), "--network", st.network_of(host), "--id", sb,
                 "--netns", f"/run/netns/{ns}", *[x for a in aliases for x in ("--alias", a)],
                 *[x for lab in labels for x in ("--label", lab)], "--namespace", namespace,
                 *[x for e in expose for x in ("--expose", e)], check=False, timeout=60)
        if r.returncode != 0:
            raise MuslinError((r.stderr.strip().splitlines() or ["attach failed"])[-1].removeprefix("error: "))
        info = json.loads(r.stdout.strip().splitlines()[-1])
        _sandbox_resolv(ns, info["address"])
    except BaseException:
        _run("ip", "netns", "del", ns, check=False)
        _sandbox_resolv(ns, None)
        raise
    st = LabState.load(name)
    st.namespaces.append(ns)
    st.sandboxes[sb] = {"host": host, "netns": ns, "address": info["address"]}
    if info.get("address6"):
        st.sandboxes[sb]["address6"] = info["address6"]
    st.save()
    return st.sandboxes[sb]


def label(name: str, sb: str, changes: tuple[str, ...]) -> str:
    """Change a sandbox's labels on its host (its muslind publishes them to the others)."""
    st = LabState.load(name)
    info = st.sandboxes.get(sb)
    if info is None:
        raise NotFound(f"lab {name} has no sandbox {sb!r}")
    r = _run("ip", "netns", "exec", ns_host(name, info["host"]), sys.executable, "-m", "muslin.control.agent",
             "label", "--state-dir", str(st.host_dir(info["host"])), "--network", st.network_of(info["host"]),
             "--id", sb, *changes, check=False, timeout=60)
    if r.returncode != 0:
        raise MuslinError((r.stderr.strip().splitlines() or ["label failed"])[-1].removeprefix("error: "))
    return r.stdout.strip()


def remove_sandbox(name: str, sb: str) -> None:
    st = LabState.load(name)
    info = st.sandboxes.get(sb)
    if info is None:
        return
    _run("ip", "netns", "exec", ns_host(name, info["host"]), sys.executable, "-m", "muslin.control.agent", "detach",
         "--state-dir", str(st.host_dir(info["host"])), "--network", st.network_of(info["host"]), "--id", sb,
         check=False)
    _run("ip", "netns", "del", info["netns"], check=False)
    _sandbox_resolv(info["netns"], None)
    st.sandboxes.pop(sb)
    if info["netns"] in st.namespaces:
        st.namespaces.remove(info["netns"])
    st.save()


def _sandbox_resolv(ns: str, address: str | None) -> None:
    """The sandbox's /etc/netns/NS/resolv.conf: its host's DNS (muslind on the gateway of the
    host's subnet), search the cluster network; None removes it."""
    from muslin.dataplane.netnsconf import resolv_conf

    if address is None:
        resolv_conf(ns, None)
        return
    import ipaddress
    net = ipaddress.ip_interface(address).network
    resolv_conf(ns, f"nameserver {next(net.hosts())}\n")


def exec_argv(name: str, sb: str, cmd: list[str]) -> list[str]:
    st = LabState.load(name)
    if sb not in st.sandboxes:
        raise NotFound(f"lab {name} has no sandbox {sb!r}")
    if not cmd:
        raise Invalid("exec: give a command after --")
    return ["ip", "netns", "exec", st.sandboxes[sb]["netns"], *cmd]


# -- status --------------------------------------------------------------------------------

def topology_url(name: str, host: str = "") -> tuple[str, str]:
    """(namespace, URL) of the topology page of a host's muslind (the first host by default):
    the address is that host namespace's own loopback, so open it from inside it."""
    st = LabState.load(name)
    h = host or (st.hosts[0] if st.hosts else "")
    if h not in st.hosts:
        raise NotFound(f"lab {name} has no host {h!r} (hosts: {', '.join(st.hosts)})")
    return ns_host(name, h), f"http://{METRICS}/topology"


def doctor_argv(name: str, host: str, output: str = "table") -> list[str]:
    """`muslin doctor` run inside a host's namespace on its state dir and the lab's etcd."""
    st = _lab_host(name, host)
    return ["ip", "netns", "exec", ns_host(name, host), sys.executable, "-m", "muslin.cli.main", "--state-dir",
            str(st.host_dir(host)), "doctor", "--config", "", "--store", st.store_url, "--hostname", host,
            "-o", output, *st.etcd_flags()]


def bgp_sessions(st: LabState, host: str) -> dict[str, str]:
    """BGP protocol name -> state info ('Established', 'Active', ...) from the host's BIRD."""
    sock = st.host_dir(host) / "cluster" / f"{st.network_of(host)}.bird.ctl"
    r = _run("birdc", "-s", str(sock), "show", "protocols", check=False, timeout=5)
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "BGP":
            out[parts[0]] = parts[-1] if len(parts) >= 6 else parts[3]
    return out


def wireguard_status(st: LabState, host: str, records: dict[str, Any]) -> dict[str, Any]:
    """The host's WireGuard interface as `wg show` has it now: its peers by hostname (their
    public keys looked up in the store's records), endpoint, allowed-ips, last handshake."""
    from muslin.dataplane.wireguard import parse_dump

    name = host_status(st, host).get("companions", {}).get("wireguard", {}).get("ifname", "")
    out: dict[str, Any] = {"ifname": name, "up": False, "peers": {}}
    if not name:
        return out
    r = _run("ip", "netns", "exec", ns_host(st.name, host), "wg", "show", name, "dump", check=False, timeout=10)
    if r.returncode != 0:
        return out
    shown = parse_dump(name, r.stdout)
    by_key = {rec.get("published", {}).get("public_key"): h for h, rec in records.items()}
    hs = {k: (t, rx, tx) for k, t, rx, tx in shown.handshakes}
    now = time.time()
    for p in shown.peers:
        t, rx, tx = hs.get(p.public_key, (0, 0, 0))
        out["peers"][by_key.get(p.public_key, "key " + p.public_key)] = {
            "public_key": p.public_key, "endpoint": p.endpoint, "allowed_ips": list(p.allowed_ips),
            "keepalive": p.keepalive, "latest_handshake": t, "handshake_age": round(now - t, 1) if t else None,
            "rx": rx, "tx": tx}
    out.update(up=True, public_key=shown.public_key, listen_port=shown.port)
    return out


def status(name: str) -> dict[str, Any]:
    """Per host: `leased` (its record is in etcd: peers route to it), `alive` (its agent
    holds its liveness key), `healthy` and, when not, `reasons`. A host whose agent died
    is degraded while it keeps its lease, and so its routes."""
    st = LabState.load(name)
    try:
        leases, alive_keys = _in_ul(st, _hosts, st.store_url, st.network, st.etcd_options())
        etcd_ok = True
    except MuslinError as e:
        leases, alive_keys, etcd_ok = {}, [], False
        leases_err = str(e)
    hosts = {}
    for h in st.hosts:
        s = host_status(st, h)
        pid = st.pids.get(f"agent-{h}", 0)
        running = _alive(pid)
        lease = leases.get(h, {})
        reasons = []
        if not running:
            reasons.append("agent not running")
        if h not in alive_keys:
            reasons.append("no liveness key in etcd")
        if not lease:
            reasons.append("no subnet lease")
        if sorted(s.get("peers", {})) != sorted(x for x in leases if x != h):
            reasons.append("peers differ from etcd")
        reasons += s.get("problems", [])
        hosts_bgp: dict[str, Any] = {}
        if st.backend == "bgp":
            bgp = bgp_sessions(st, h)
            hosts_bgp = {"bgp_sessions": bgp}
            if not bgp or not all(v == "Established" for v in bgp.values()):
                reasons.append("BGP sessions not all established")
        elif st.backend == "wireguard":
            wg = wireguard_status(st, h, leases)
            hosts_bgp = {"wireguard": wg}
            if not wg.get("up"):
                reasons.append(f"wireguard interface {wg.get('ifname') or '?'} is missing")
            elif sorted(wg["peers"]) != sorted(x for x in leases if x != h):
                reasons.append("wireguard peers differ from etcd")
        hosts[h] = {**hosts_bgp, "netns": ns_host(name, h), "agent_pid": pid, "agent_alive": running,
                    "alive": h in alive_keys,
                    "subnet": lease.get("subnet") or s.get("subnet", ""), "underlay": lease.get("underlay", ""),
                    "leased": bool(lease), "peers": sorted(s.get("peers", {})), "problems": s.get("problems", []),
                    "store_ok": s.get("store_ok", False), "healthy": not reasons, "reasons": reasons}
    out = {"name": name, "backend": st.backend, "network": st.network, "cidr": st.cidr,
           "etcd": {"endpoint": st.store_url, "pid": st.pids.get("etcd", 0), "healthy": etcd_ok},
           "hosts": hosts, "sandboxes": st.sandboxes}
    if not etcd_ok:
        out["etcd"]["error"] = leases_err
    return out


def degraded(s: dict[str, Any]) -> str:
    """One line naming what is degraded in a status(), or '' when all is healthy."""
    bad = [f"{h} ({', '.join(d['reasons'])})" for h, d in s["hosts"].items() if not d["healthy"]]
    if not s["etcd"]["healthy"]:
        bad.insert(0, "etcd (unreachable)")
    return f"lab {s['name']} is degraded: {'; '.join(bad)}" if bad else ""

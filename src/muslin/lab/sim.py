"""A simulated cluster: many agents in one process, on the in-memory dataplane (no kernel
objects, no namespaces, no root), against one real etcd on loopback, to measure the
control plane beyond what one machine's namespaces hold (`muslin lab simulate`,
`python -m bench --only scale`).

Two kinds of simulated hosts, both real etcd clients with their own connections:
- *agents*: the real `Agent` (control/agent.py) with a FakeHost (control/agent_host.py):
  subnet and liveness leases, the one long-lived watch and its local copy, O(changed)
  reconciles into the fake overlay, resyncs and jittered relists. Each costs memory in
  proportion to the cluster (every peer's record and kernel objects), so at N hosts only
  `full` of them are agents (default: all up to 100, then ~100,000 peer copies in all:
  100 at 1,000 hosts, 20 at 5,000; each agent's periodic resync is a full diff over every
  peer, so 1,000 agents of 1,000 peers would need more CPU than one Python process has,
  and the latencies would measure the simulator);
- *watchers* (the rest): a record under a subnet lease and a liveness lease kept alive
  like an agent's, one watch stream on the hosts' prefix whose events are decoded but not
  kept, and the agent's rare relist (the list fetched, not decoded): to etcd they cost what
  an agent costs.

Measured (`run()` returns it as a dict): a host joining (its record in etcd) until every
agent has its route and every watcher has its event, a host leaving until every agent has
dropped its route; at idle and under churn (hosts joining and leaving at `churn` per
second): etcd's CPU, RSS, bytes sent, gRPC calls and watch events sent per second, the
agents' CPU (their own threads) per agent and per event, and this process's CPU (when it
is near the machine's cores, the latencies measure the simulator, not Muslin).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from muslin.backends.model import ClusterConfig, HostRecord
from muslin.backends.vxlan import vtep_mac
from muslin.control.agent import (Agent, alive_every, alive_prefix, hosts_prefix, init_config, relist_period,
                                  subnet_key)
from muslin.control.agent_host import FakeHost
from muslin.model.errors import Unavailable
from muslin.store.base import Put
from muslin.store.etcd import EtcdStore, EtcdWatch

NETWORK = "sim"
CIDR = "10.0.0.0/8"  # /24 per host: room for 65,536
UNDERLAY = ipaddress.ip_network("172.16.0.0/12")
CLK = os.sysconf("SC_CLK_TCK")


def default_full(n: int) -> int:
    """How many of n hosts are whole agents: all up to 100, then ~100,000 peer copies (>= 20)."""
    return min(n, max(20, 100_000 // max(n, 1)))


# -- etcd ------------------------------------------------------------------------------------

def etcd_metrics(text: str) -> dict[str, float]:
    """From etcd's /metrics: gRPC calls started by method (grpc_Watch, grpc_Range, ...), bytes
    and watch events sent, watchers and watch streams."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'grpc_server_started_total\{grpc_method="(\w+)"', line)
        if m:
            out["grpc_" + m.group(1)] = out.get("grpc_" + m.group(1), 0.0) + float(line.split()[-1])
            continue
        for k in ("etcd_network_client_grpc_sent_bytes_total", "etcd_debugging_mvcc_events_total",
                  "etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_watch_stream_total"):
            if line.startswith(k + " "):
                out[k] = float(line.split()[-1])
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """A throwaway etcd on loopback (free ports, a temp data dir), stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "etcd"
        self.port, self.peer = _free_port(), _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> Etcd:
        if shutil.which("etcd") is None:
            raise Unavailable("etcd is not installed")
        c, p = f"http://{self.endpoint}", f"http://127.0.0.1:{self.peer}"
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "etcd.log", "ab")
        self.proc = subprocess.Popen(["etcd", "--name", "sim", "--data-dir", str(self.dir / "data"),
                                      "--listen-client-urls", c, "--advertise-client-urls", c,
                                      "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                                      "--initial-cluster", f"sim={p}"],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"{c}/health", timeout=1) as r:
                    if b"true" in r.read():
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                tail = (self.dir / "etcd.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise Unavailable(f"etcd exited: {' '.join(tail)[:300]}")
            time.sleep(0.1)
        raise Unavailable("etcd did not become healthy")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def metrics(self) -> dict[str, float]:
        out = etcd_metrics(urllib.request.urlopen(f"http://{self.endpoint}/metrics", timeout=10).read().decode())
        assert self.proc is not None
        st = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(st[11]) + int(st[12])) / CLK
        out["rss_mb"] = int(st[21]) * resource.getpagesize() / 2**20
        return out


# -- the hosts -----------------------------------------------------------------------------

def record(i: int, prefix: str = "w") -> HostRecord:
    name = f"{prefix}{i}"
    subnet = ipaddress.ip_network(CIDR).network_address + (i << 8)
    return HostRecord(name, f"{subnet}/24", str(UNDERLAY.network_address + 1 + i), str(UNDERLAY),
                      {"vtep_mac": vtep_mac(NETWORK, name), "vtep_ip": str(subnet)})


class Watcher:
    """A watch-only host: its records and leases in etcd, one watch stream whose events are
    decoded and counted (and, for the keys the run tracks, timed), the rare relist."""

    def __init__(self, sim: Sim, rec: HostRecord) -> None:
        self.sim, self.rec = sim, rec
        self.store = EtcdStore([sim.etcd.endpoint])
        self.events = 0
        self.seen: dict[tuple[str, str], float] = {}  # (type, key) -> when
        self.alive_lease = 0
        self.watch: EtcdWatch | None = None

    def register(self) -> None:
        s, net = self.sim.keeper(self.rec.hostname), NETWORK
        subnet_lease = s.grant_lease(self.sim.cfg.subnet_ttl)
        self.alive_lease = s.grant_lease(self.sim.cfg.lease_ttl)
        s.txn([], [Put(hosts_prefix(net) + self.rec.hostname, self.rec.to_dict(), lease=subnet_lease),
                   Put(subnet_key(net, self.rec.subnet), {"hostname": self.rec.hostname}, lease=subnet_lease),
                   Put(alive_prefix(net) + self.rec.hostname, {"pid": os.getpid(), "since": time.time()},
                       lease=self.alive_lease)])

    def start(self, revision: int) -> None:
        self.watch = EtcdWatch(self.store, hosts_prefix(NETWORK), revision + 1, sink=self)

    def put(self, item: tuple[str, Any]) -> None:  # the watch's reader thread hands over here
        kind, events = item
        if kind != "events":
            return
        self.events += len(events)
        tracked = self.sim.tracked
        for e in events:
            if e.key in tracked:
                self.seen[(e.type, e.key)] = time.monotonic()

    def relist(self) -> None:
        """What an agent's check list costs etcd: the whole prefix (fetched, not decoded)."""
        conn, _ep = self.store._connect(10)
        try:
            conn.request("POST", "/v3/kv/range", body=json.dumps(self.store._range(hosts_prefix(NETWORK))),
                         headers={"Content-Type": "application/json"})
            self.sim.relist_bytes += len(conn.getresponse().read())
        finally:
            conn.close()

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        self.store.close()


class Sim:
    def __init__(self, hosts: int, full: int | None = None, workdir: str | Path | None = None,
                 resync: float = 10.0, relist: float = 600.0, lease_ttl: int = ClusterConfig.lease_ttl,
                 log: Callable[[str], None] = print) -> None:
        self.n = hosts
        self.full = min(hosts, default_full(hosts) if full is None else full)
        self.tmp = Path(workdir or tempfile.mkdtemp(prefix="muslin-sim-"))
        self.resync, self.relist, self.lease_ttl = resync, relist, lease_ttl
        self.log = log
        self.etcd = Etcd(self.tmp)
        self.cfg = ClusterConfig(NETWORK, cidr=CIDR, host_prefix=24, backend="vxlan", lease_ttl=lease_ttl)
        self.agents: list[tuple[Agent, threading.Event, threading.Thread]] = []
        self.watchers: list[Watcher] = []
        self.keepers: list[EtcdStore] = []  # the watchers' lease renewals go through these
        self.tracked: set[str] = set()
        self.began: dict[tuple[str, str], float] = {}  # (kind, key) -> when its write began (monotonic)
        self.relist_bytes = 0
        self._stop = threading.Event()
        self._bg: list[threading.Thread] = []
        self._churn_i = 0

    # -- setting up ------------------------------------------------------------------------
    def keeper(self, name: str) -> EtcdStore:
        return self.keepers[hash(name) % len(self.keepers)]

    def start(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a watch stream per host
        threading.stack_size(512 * 1024)
        self.etcd.start()
        admin = EtcdStore([self.etcd.endpoint])
        init_config(admin, self.cfg, probe=False)
        self.keepers = [EtcdStore([self.etcd.endpoint]) for _ in range(max(1, (self.n - self.full) // 100))]
        t0 = time.monotonic()
        self.watchers = [Watcher(self, record(i)) for i in range(self.n - self.full)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(Watcher.register, self.watchers))
        rev = admin.revision()
        for w in self.watchers:
            w.start(rev)
        admin.close()
        self.log(f"  {len(self.watchers)} watch-only hosts registered and watching in {time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
        wave = 50
        for start in range(0, self.full, wave):
            batch = [self._start_agent(i) for i in range(start, min(self.full, start + wave))]
            self._wait(lambda: all(a.reconciles > 0 for a in batch), 300, "agents joining")
        self._wait(self.converged, 600, "agents converging")
        self.log(f"  {self.full} agents joined and converged in {time.monotonic() - t0:.1f} s")
        for fn in (self._keepalives, self._relists):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            self._bg.append(t)

    def _start_agent(self, i: int) -> Agent:
        name = f"a{i}"
        ip = str(UNDERLAY.network_address + 1 + (1 << 16) + i)
        a = Agent(EtcdStore([self.etcd.endpoint]), NETWORK, name, self.tmp / "agents" / name, resync=self.resync,
                  relist=self.relist, log=lambda m: None, host=FakeHost(ip=ip, net=str(UNDERLAY)), status=False)
        stop = threading.Event()
        t = threading.Thread(target=a.run, args=(stop,), name=f"agent {name}", daemon=True)
        t.start()
        self.agents.append((a, stop, t))
        return a

    def converged(self) -> bool:
        return all(len(a.peers) >= self.n and len(a.host.ov.routes) >= self.n - 1 for a, _s, _t in self.agents)

    def _wait(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                raise Unavailable(f"simulated cluster: {what} took over {timeout:.0f} s")
            time.sleep(0.1)

    def _keepalives(self) -> None:
        """The watchers' liveness leases, each renewed as often as an agent's (alive_every)."""
        every = alive_every(self.lease_ttl)
        ws = list(self.watchers)
        if not ws:
            return
        with ThreadPoolExecutor(8) as pool:
            while not self._stop.is_set():
                t0 = time.monotonic()
                step = every / len(ws)
                for k, w in enumerate(ws):
                    if self._stop.is_set():
                        return
                    pool.submit(self._renew, w)
                    delay = t0 + (k + 1) * step - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)

    def _renew(self, w: Watcher) -> None:
        try:
            self.keeper(w.rec.hostname).refresh_lease(w.alive_lease)
        except Exception:  # noqa: BLE001 - a missed renewal is noticed by nothing here
            pass

    def _relists(self) -> None:
        """The watchers' check lists, each as often as an agent's (relist_period; the agents
        do their own)."""
        if not self.watchers:
            return
        rate = len(self.watchers) / relist_period(self.relist, self.n)  # lists per second, in the steady state
        while not self._stop.wait(random.expovariate(rate)):
            try:
                random.choice(self.watchers).relist()
            except Exception:  # noqa: BLE001
                pass

    # -- measuring -------------------------------------------------------------------------
    def _agent_tids(self) -> list[int]:
        tids = []
        for a, _s, t in self.agents:
            tids.append(t.native_id)
            w = a.cache._watch if a.cache is not None else None
            if isinstance(w, EtcdWatch):
                tids.append(w._thread.native_id)
        return [t for t in tids if t]

    @staticmethod
    def _cpu(tids: list[int]) -> float:
        total = 0
        for tid in tids:
            try:
                st = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(st[11]) + int(st[12])
            except OSError:
                pass
        return total / CLK

    def sample(self) -> dict[str, Any]:
        return {"t": time.monotonic(), "etcd": self.etcd.metrics(), "agents_cpu": self._cpu(self._agent_tids()),
                "proc_cpu": sum(os.times()[:2]),
                "agent_events": sum(a.cache.events for a, _s, _t in self.agents if a.cache is not None),
                "watcher_events": sum(w.events for w in self.watchers),
                "client_bytes": sum(a.store.stats["bytes_received"] + a.store.stats["watch_bytes"]
                                    for a, _s, _t in self.agents)
                + sum(w.store.stats["watch_bytes"] for w in self.watchers) + self.relist_bytes,
                "relists": sum(a.counts["relists"] for a, _s, _t in self.agents)}

    def rates(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        dt = b["t"] - a["t"]
        ea, eb = a["etcd"], b["etcd"]
        ev = b["agent_events"] - a["agent_events"]
        out = {"seconds": round(dt, 1),
               "etcd_cpu_pct": round(100 * (eb["cpu_s"] - ea["cpu_s"]) / dt, 2), "etcd_rss_mb": round(eb["rss_mb"], 1),
               "etcd_sent_bytes_per_s": round((eb["etcd_network_client_grpc_sent_bytes_total"]
                                               - ea["etcd_network_client_grpc_sent_bytes_total"]) / dt),
               "client_received_bytes_per_s": round((b["client_bytes"] - a["client_bytes"]) / dt),
               "watch_events_sent_per_s": round((eb["etcd_debugging_mvcc_events_total"]
                                                 - ea["etcd_debugging_mvcc_events_total"]) / dt, 1),
               "watch_streams": int(eb.get("etcd_debugging_mvcc_watch_stream_total", 0)),
               "new_watch_streams": int(eb.get("grpc_Watch", 0) - ea.get("grpc_Watch", 0)),
               "ranges_per_s": round((eb.get("grpc_Range", 0) - ea.get("grpc_Range", 0)) / dt, 2),
               "lease_keepalives_per_s": round((eb.get("grpc_LeaseKeepAlive", 0) - ea.get("grpc_LeaseKeepAlive", 0)) / dt, 1),
               "agent_cpu_pct_each": round(100 * (b["agents_cpu"] - a["agents_cpu"]) / dt / max(1, len(self.agents)), 4),
               "agent_events_per_s_each": round(ev / dt / max(1, len(self.agents)), 2),
               "sim_process_cpu_pct": round(100 * (b["proc_cpu"] - a["proc_cpu"]) / dt, 1)}
        if ev:
            out["agent_cpu_ms_per_event"] = round(1000 * (b["agents_cpu"] - a["agents_cpu"]) / ev, 3)
        return out

    # -- joining and leaving ----------------------------------------------------------------
    def _churn_agent(self) -> Agent:
        i = self._churn_i
        self._churn_i += 1
        name = f"c{i}"
        a = Agent(EtcdStore([self.etcd.endpoint]), NETWORK, name, self.tmp / "churn" / name, relist=self.relist,
                  log=lambda m: None, host=FakeHost(ip=str(UNDERLAY.network_address + 1 + (2 << 16) + i),
                                                   net=str(UNDERLAY)), status=False)
        self.tracked.add(hosts_prefix(NETWORK) + name)
        return a

    def join(self, a: Agent) -> float:
        """A host joins as an agent does (leases, record, liveness, its one list); returns
        when its record was in etcd (monotonic)."""
        a.cfg = self.cfg
        dev, ip, net, mtu = a.overlay().underlay()
        a.underlay_dev = dev
        self.began[("put", hosts_prefix(NETWORK) + a.hostname)] = time.monotonic()  # a fast peer sees it before we return
        a.register(ip, net, mtu)
        t = time.monotonic()
        a.publish_alive()
        a._load_peers()
        a.cache.close()  # type: ignore[union-attr]
        return t

    def leave(self, a: Agent) -> float:
        t = time.monotonic()
        self.began[("delete", hosts_prefix(NETWORK) + a.hostname)] = t
        a.leave()
        a.store.close()
        return t

    def known(self, key: str, subnet: str, t0: float, kind: str) -> list[float]:
        """Seconds after t0 at which each agent and watcher knew (None: not yet; 0 for those
        that knew between the write's start and t0, when it was done)."""
        out: list[float | None] = []
        op = "add" if kind == "put" else "del"
        since = min(t0, self.began.get((kind, key), t0))
        for a, _s, _t in self.agents:
            at = next((t for t, o in a.host.ov.route_log.get(subnet, ()) if o == op and t >= since), None)
            out.append(max(0.0, at - t0) if at is not None else None)
        for w in self.watchers:
            at = w.seen.get((kind, key))
            out.append(max(0.0, at - t0) if at is not None and at >= since else None)
        return out

    def wait_known(self, key: str, subnet: str, t0: float, kind: str, timeout: float = 60) -> list[float]:
        end = time.monotonic() + timeout
        while True:
            got = self.known(key, subnet, t0, kind)
            if all(x is not None for x in got) or time.monotonic() > end:
                return got
            time.sleep(0.02)

    def propagation(self, joins: int) -> dict[str, Any]:
        """`joins` hosts join one after another, then leave: how long until all know."""
        res: dict[str, list[float]] = {"join": [], "leave": []}
        missing = 0
        for _ in range(joins):
            a = self._churn_agent()
            key = hosts_prefix(NETWORK) + a.hostname
            t0 = self.join(a)
            got = self.wait_known(key, a.local.record.subnet, t0, "put")  # type: ignore[union-attr]
            missing += sum(x is None for x in got)
            res["join"].append(max(x for x in got if x is not None))
            subnet = a.local.record.subnet  # type: ignore[union-attr]
            time.sleep(0.3)
            t0 = self.leave(a)
            got = self.wait_known(key, subnet, t0, "delete")
            missing += sum(x is None for x in got)
            res["leave"].append(max(x for x in got if x is not None))
            time.sleep(0.3)
        return {f"{k}_all_s": {"p50": round(statistics.median(v), 3), "max": round(max(v), 3), "n": len(v)}
                for k, v in res.items()} | {"not_known_within_60s": missing}

    def churn(self, rate: float, seconds: float) -> dict[str, Any]:
        """Hosts joining and leaving at `rate` per second (alternately) for `seconds`."""
        ops: list[tuple[str, str, str, float]] = []  # (kind, key, subnet, t0)
        live: list[Agent] = []
        lock = threading.Lock()

        def one(k: int) -> None:
            with lock:
                leaving = live.pop(0) if (k % 2 and live) else None
            if leaving is None:
                a = self._churn_agent()
                t0 = self.join(a)
                with lock:
                    live.append(a)
                    ops.append(("put", hosts_prefix(NETWORK) + a.hostname, a.local.record.subnet, t0))  # type: ignore
            else:
                subnet = leaving.local.record.subnet  # type: ignore[union-attr]
                t0 = self.leave(leaving)
                with lock:
                    ops.append(("delete", hosts_prefix(NETWORK) + leaving.hostname, subnet, t0))

        before = self.sample()
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            k = 0
            while time.monotonic() - start < seconds:
                pool.submit(one, k)
                k += 1
                delay = start + k / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        after = self.sample()
        out = self.rates(before, after)
        out["ops"] = len(ops)
        out["ops_per_s"] = round(len(ops) / (time.monotonic() - start), 2)
        time.sleep(2)
        lat = {"put": [], "delete": []}
        missing = 0
        end = time.monotonic() + 30  # for them all: a host missing one op must not cost 30 s per op
        for kind, key, subnet, t0 in ops:
            got = self.wait_known(key, subnet, t0, kind, timeout=max(0.0, end - time.monotonic()))
            missing += sum(x is None for x in got)
            known = [x for x in got if x is not None]
            if known:
                lat[kind].append(max(known))
        for kind, name in (("put", "join_all_s"), ("delete", "leave_all_s")):
            v = lat[kind]
            if v:
                out[name] = {"p50": round(statistics.median(v), 3), "max": round(max(v), 3), "n": len(v)}
        out["not_known_within_30s"] = missing
        for a in live:
            self.leave(a)
        return out

    def run(self, idle: float = 30, joins: int = 5, churn: float = 10, churn_seconds: float = 30) -> dict[str, Any]:
        out: dict[str, Any] = {"hosts": self.n, "agents": self.full, "watchers": self.n - self.full,
                               "backend": "vxlan", "lease_ttl": self.lease_ttl, "resync": self.resync,
                               "relist": self.relist}
        t0 = time.monotonic()
        self.start()
        out["setup_s"] = round(time.monotonic() - t0, 1)
        time.sleep(min(10, idle))  # let the setup's tail settle
        a = self.sample()
        time.sleep(idle)
        out["idle"] = self.rates(a, self.sample())
        self.log(f"  idle: {json.dumps(out['idle'])}")
        out["propagation"] = self.propagation(joins)
        self.log(f"  one at a time: {json.dumps(out['propagation'])}")
        if churn > 0:
            out["churn"] = self.churn(churn, churn_seconds)
            out["churn"]["rate"] = churn
            self.log(f"  churn {churn}/s: {json.dumps(out['churn'])}")
        return out

    def close(self) -> None:
        self._stop.set()
        for a, stop, _t in self.agents:
            stop.set()
            a.wake()
        for _a, _stop, t in self.agents:
            t.join(5)
        for a, _s, _t in self.agents:
            a.store.close()
        for w in self.watchers:
            w.close()
        for k in self.keepers:
            k.close()
        self.etcd.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def simulate(hosts: int, full: int | None = None, idle: float = 30, joins: int = 5, churn: float = 10,
             churn_seconds: float = 30, log: Callable[[str], None] = print, **kw: Any) -> dict[str, Any]:
    sim = Sim(hosts, full, log=log, **kw)
    try:
        return sim.run(idle, joins, churn, churn_seconds)
    finally:
        sim.close()


def summary(r: dict[str, Any]) -> list[list[str]]:
    """A run's headline figures as [what, value, detail] rows (the CLI and bench/report.py)."""
    idle, prop = r["idle"], r["propagation"]
    who = f"{r['hosts']} hosts ({r['agents']} agents)"

    def ms(d: dict[str, Any]) -> str:
        return f"{d['p50'] * 1e3:.0f} ms p50, max {d['max'] * 1e3:.0f} ms"

    out = [[f"{who}: join known by all", ms(prop["join_all_s"]), f"{prop['join_all_s']['n']} joins, one at a time"],
           [f"{who}: leave removed everywhere", ms(prop["leave_all_s"]), f"{prop['not_known_within_60s']} never"],
           [f"{who}: etcd idle", f"{idle['etcd_cpu_pct']:.1f}% CPU",
            f"RSS {idle['etcd_rss_mb']:.0f} MB, {idle['etcd_sent_bytes_per_s']} B/s sent, "
            f"{idle['watch_events_sent_per_s']} events/s, {idle['new_watch_streams']} new streams, "
            f"{idle['ranges_per_s']} lists/s"],
           [f"{who}: agent idle", f"{idle['agent_cpu_pct_each']:.3f}% CPU each",
            f"simulator process {idle['sim_process_cpu_pct']}%"]]
    ch = r.get("churn")
    if ch:
        lat = "; ".join(f"{k.split('_')[0]} {ms(ch[k])}" for k in ("join_all_s", "leave_all_s") if k in ch)
        out.append([f"{who}: churn {ch['rate']}/s", f"{ch['etcd_cpu_pct']:.1f}% etcd CPU",
                    f"{lat}; {ch['watch_events_sent_per_s']} events/s sent, "
                    f"agent {ch.get('agent_cpu_ms_per_event', 0):.3f} ms CPU per event, "
                    f"{ch['not_known_within_30s']} never, simulator {ch['sim_process_cpu_pct']}%"])
    return out

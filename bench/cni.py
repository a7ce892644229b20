"""CNI ADD/DEL latency and parallel throughput: Muslin (agent, in-process; through the
agent also with the Python entry when the native forwarder is installed, and the same
requests sent to muslind with no plugin process: its own time) vs the
reference bridge + host-local plugins, all with masquerade, each in its own throwaway
host namespace, with N endpoints (throwaway container namespaces) already attached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.ns import Namespaces, token

REF_DIR = "/usr/lib/cni"
MAX_BRIDGE_PORTS = 1023  # Linux bridge limit (BR_MAX_PORTS): beyond it "exchange full"
VENV_BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Sample:
    variant: str
    endpoints: int
    verb: str  # ADD, DEL, ADDx8, DELx8
    times: list[float] = field(default_factory=list)
    wall: float = 0.0

    @property
    def p50(self) -> float:
        return pct(self.times, 0.5)

    @property
    def p95(self) -> float:
        return pct(self.times, 0.95)

    @property
    def cps(self) -> float:
        return len(self.times) / self.wall if self.wall else float("nan")

    def to_dict(self) -> dict:
        return {"variant": self.variant, "endpoints": self.endpoints, "verb": self.verb, "n": len(self.times),
                "p50_ms": self.p50 * 1e3, "p95_ms": self.p95 * 1e3, "wall_s": self.wall, "cps": self.cps}


class Setup:
    """One host namespace, one network config, the plugins to call."""

    def __init__(self, nss: Namespaces, name: str, tmp: Path, kind: str, subnet: str) -> None:
        self.nss, self.name, self.kind = nss, name, kind
        self.host = nss.host(f"h{name}")
        self.dir = tmp / name
        self.dir.mkdir()
        self.daemon: subprocess.Popen | None = None
        self.sock = str(self.dir / "muslind.sock")
        net = f"b{name}{token(4)}"
        if kind == "ref":
            self.conf = {"cniVersion": "1.0.0", "name": net, "type": "bridge", "bridge": f"br{net}"[:15],
                         "isGateway": True, "ipMasq": True,
                         "ipam": {"type": "host-local", "dataDir": str(self.dir / "ipam"),
                                  "ranges": [[{"subnet": subnet}]]}}
            self.exe = f"{REF_DIR}/bridge"
            self.path = REF_DIR
        else:
            self.conf = {"cniVersion": "1.0.0", "name": net, "type": "muslin-cni", "bridge": f"br{net}"[:15],
                         "isGateway": True, "ipMasq": True,
                         "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": subnet}]]}}
            self.exe = str(VENV_BIN / "muslin-cni")  # the native forwarder where setup.sh built it
            self.path = f"{VENV_BIN}:{REF_DIR}"
            self.py_dir = self.dir / "py-plugins"  # the Python entry under the plugins' own names
            self.py_dir.mkdir()
            for name in ("muslin-cni", "muslin-ipam"):
                if (VENV_BIN / f"{name}-py").exists():
                    (self.py_dir / name).symlink_to(VENV_BIN / f"{name}-py")
        self.stdin = json.dumps(self.conf)
        self.attached: list[str] = []  # container namespaces with an endpoint

    # -- muslind ------------------------------------------------------------------------
    def start_agent(self) -> None:
        log = open(self.dir / "muslind.log", "w")
        self.daemon = subprocess.Popen(
            ["ip", "netns", "exec", self.host, str(VENV_BIN / "muslind"), "--docker-socket", "",
             "--agent-socket", self.sock, "--state-dir", str(self.dir / "state"), "--reconcile-interval", "0",
             "--log-level", "warning"], stdout=log, stderr=log)
        deadline = time.time() + 30
        while not os.path.exists(self.sock):
            if self.daemon.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"muslind did not start: {(self.dir / 'muslind.log').read_text()[-500:]}")
            time.sleep(0.05)

    def stop_agent(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None

    def phases(self, reset: bool = True) -> dict:
        """muslind's phase timings since the last reset (its `stats` request)."""
        from bench.worker import _raw

        _rc, out = _raw(self.sock, {}, json.dumps({"reset": reset}).encode(), plugin=b"stats")
        return json.loads(out)

    def rss_mb(self) -> float:
        if not self.daemon:
            return float("nan")
        for line in Path(f"/proc/{self.daemon.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    # -- calls --------------------------------------------------------------------------
    def env(self, verb: str, cns: str, agent: bool, py: bool = False) -> dict[str, str]:
        e = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cns, "CNI_NETNS": f"/run/netns/{cns}",
             "CNI_IFNAME": "eth0", "CNI_PATH": f"{self.py_dir}:{REF_DIR}" if py else self.path}
        if self.kind != "ref":
            e["MUSLIN_STATE_DIR"] = str(self.dir / "state")
            e["MUSLIN_AGENT_SOCKET"] = self.sock if agent else str(self.dir / "no-agent.sock")
        return e

    def call(self, verb: str, netns: str, way: "Way") -> dict:
        """One plugin call for the worker (bench/worker.py)."""
        return {"exe": str(self.py_dir / "muslin-cni") if way.py else self.exe, "stdin": self.stdin,
                "env": self.env(verb, netns, way.agent, way.py), **({"raw": self.sock} if way.raw else {})}

    def run(self, calls: list[dict], parallel: int = 1) -> tuple[list[float], float]:
        job = {"parallel": parallel, "calls": calls}
        p = subprocess.run(["ip", "netns", "exec", self.host, sys.executable, str(HERE / "worker.py")],
                           input=json.dumps(job), text=True, capture_output=True, timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"bench worker failed: {p.stderr.strip()[-800:]}")
        ans = json.loads(p.stdout)
        if ans["nerrors"]:
            raise RuntimeError(f"{self.name}: {ans['nerrors']} call(s) failed, e.g. {ans['errors'][0]}")
        return ans["times"], ans["wall"]

    def calls(self, verb: str, netns: list[str], way: "Way", parallel: int = 1) -> tuple[list[float], float]:
        return self.run([self.call(verb, n, way) for n in netns], parallel)


@dataclass(frozen=True)
class Way:
    """How a variant reaches the work: muslind's socket or in-process, the Python entry
    instead of the installed muslin-cni, or no plugin process at all (raw framing 2)."""
    variant: str
    agent: bool = True
    py: bool = False
    raw: bool = False


def new_containers(nss: Namespaces, n: int) -> list[str]:
    tag = token(4)
    return nss.make([f"{nss.prefix}-c{tag}-{i}" for i in range(n)])


def grow(s: Setup, nss: Namespaces, target: int) -> None:
    need = target - len(s.attached)
    if need <= 0:
        return
    cns = new_containers(nss, need)
    s.calls("ADD", cns, Way("grow"))
    s.attached.extend(cns)


def measure(s: Setup, nss: Namespaces, ways: list[Way], level: int, samples: int, par_samples: int,
            parallel: int = 8, phases: dict | None = None) -> list[Sample]:
    """At `level` endpoints: `samples` rounds of one ADD then one DEL per way on fresh
    namespaces, the ways alternated within each round (so the machine's load drifts over
    them alike); then per way `par_samples` ADDs and DELs with `parallel` at once. The
    host goes back to `level`."""
    out = []
    cns = new_containers(nss, samples * len(ways))
    calls, keys = [], []
    for r in range(samples):
        batch = [(w, cns[r * len(ways) + i]) for i, w in enumerate(ways)]
        for verb in ("ADD", "DEL"):
            calls += [s.call(verb, n, w) for w, n in batch]
            keys += [(w.variant, verb) for w, _ in batch]
    if phases is not None:
        s.phases(reset=True)
    times, _ = s.run(calls)
    if phases is not None:  # muslind's own phases over the one-at-a-time calls only
        phases.update(s.phases(reset=True))
    for w in ways:
        for verb in ("ADD", "DEL"):
            out.append(Sample(w.variant, level, verb, [t for t, k in zip(times, keys) if k == (w.variant, verb)]))
    nss.delete(cns)
    for w in ways if par_samples else ():
        cns = new_containers(nss, par_samples)
        t, wall = s.calls("ADD", cns, w, parallel=parallel)
        out.append(Sample(w.variant, level, f"ADDx{parallel}", t, wall))
        t, wall = s.calls("DEL", cns, w, parallel=parallel)
        out.append(Sample(w.variant, level, f"DELx{parallel}", t, wall))
        nss.delete(cns)
    return out


def run_cni(levels: list[int], samples: int, par_samples: int, log=print, rss: dict | None = None,
            phases: dict | None = None) -> list[Sample]:
    """The whole CNI comparison. Returns every sample; `rss[level]` gets muslind's RSS in MB,
    `phases[level]` muslind's own phase timings over its calls at that level."""
    nss = Namespaces(f"mb{token(4)}")
    results: list[Sample] = []
    tmp = Path(tempfile.mkdtemp(prefix="muslin-bench-"))
    setups: list[Setup] = []
    try:
        ref = Setup(nss, "ref", tmp, "ref", "10.128.0.0/16")
        mus = Setup(nss, "mus", tmp, "muslin", "10.129.0.0/16")
        setups = [ref, mus]
        mus.start_agent()
        ways = [Way("muslin-agent")]
        if (mus.py_dir / "muslin-cni").exists():  # the native forwarder is installed: the Python entry too
            ways.append(Way("muslin-agent-py", py=True))
        ways.append(Way("muslind-only", raw=True))
        # in-process calls on their own: mixed in, they change the agent's next call (the store
        # and the firewall state moved under it)
        groups = [(ref, [Way("reference")]), (mus, ways), (mus, [Way("muslin-inproc", agent=False)])]
        for level in levels:
            t0 = time.time()
            grow(ref, nss, level)
            grow(mus, nss, level)
            log(f"  {level} endpoints on each host ({time.time() - t0:.1f}s to grow)")
            room = (MAX_BRIDGE_PORTS - level) // len(ways)  # measured endpoints come on top of `level`
            for s, group in groups:
                ph = phases.setdefault(level, {}) if (phases is not None and group is ways) else None
                got = measure(s, nss, group, level, min(samples, room), min(par_samples, room), phases=ph)
                results.extend(got)
                for w in group:
                    log("    " + "  ".join(f"{g.verb} p50 {g.p50 * 1e3:.1f}ms" for g in got
                                           if g.variant == w.variant and "x" not in g.verb) + f"  [{w.variant}]")
            if rss is not None:
                rss[level] = mus.rss_mb()
        return results
    finally:
        for s in setups:
            s.stop_agent()
        nss.cleanup()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

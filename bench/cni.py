"""CNI ADD/DEL latency and parallel throughput: Muslin (agent, in-process; through the
agent also with the Python entry when the native forwarder is installed, and the same
requests sent to muslind with no plugin process: its own time) vs the
reference bridge + host-local plugins, all with masquerade, each in its own throwaway
host namespace, with N endpoints (throwaway container namespaces) already attached."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.ns import Namespaces, run, token

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

    def calls(self, verb: str, netns: list[str], agent: bool = True, parallel: int = 1,
              py: bool = False, raw: bool = False) -> tuple[list[float], float]:
        exe = str(self.py_dir / "muslin-cni") if py else self.exe
        job = {"parallel": parallel,
               "calls": [{"exe": exe, "env": self.env(verb, n, agent, py), "stdin": self.stdin,
                          **({"raw": self.sock} if raw else {})} for n in netns]}
        p = subprocess.run(["ip", "netns", "exec", self.host, sys.executable, str(HERE / "worker.py")],
                           input=json.dumps(job), text=True, capture_output=True, timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"bench worker failed: {p.stderr.strip()[-800:]}")
        ans = json.loads(p.stdout)
        if ans["nerrors"]:
            raise RuntimeError(f"{self.name}: {ans['nerrors']} {verb} call(s) failed, e.g. {ans['errors'][0]}")
        return ans["times"], ans["wall"]


def new_containers(nss: Namespaces, n: int) -> list[str]:
    tag = token(4)
    return nss.make([f"{nss.prefix}-c{tag}-{i}" for i in range(n)])


def grow(s: Setup, nss: Namespaces, target: int, agent: bool = True) -> None:
    need = target - len(s.attached)
    if need <= 0:
        return
    cns = new_containers(nss, need)
    s.calls("ADD", cns, agent=agent, parallel=1)
    s.attached.extend(cns)


def measure(s: Setup, nss: Namespaces, variant: str, level: int, samples: int, par_samples: int,
            agent: bool = True, parallel: int = 8, py: bool = False, raw: bool = False) -> list[Sample]:
    """At `level` endpoints: `samples` sequential ADDs then DELs on fresh namespaces, then
    `par_samples` ADDs and DELs with `parallel` at once. The host goes back to `level`."""
    out = []
    cns = new_containers(nss, samples)
    t, _ = s.calls("ADD", cns, agent=agent, py=py, raw=raw)
    out.append(Sample(variant, level, "ADD", t))
    t, _ = s.calls("DEL", cns, agent=agent, py=py, raw=raw)
    out.append(Sample(variant, level, "DEL", t))
    nss.delete(cns)
    if par_samples:
        cns = new_containers(nss, par_samples)
        t, w = s.calls("ADD", cns, agent=agent, parallel=parallel, py=py, raw=raw)
        out.append(Sample(variant, level, f"ADDx{parallel}", t, w))
        t, w = s.calls("DEL", cns, agent=agent, parallel=parallel, py=py, raw=raw)
        out.append(Sample(variant, level, f"DELx{parallel}", t, w))
        nss.delete(cns)
    return out


def run_cni(levels: list[int], samples: int, par_samples: int, log=print, rss: dict | None = None) -> list[Sample]:
    """The whole CNI comparison. Returns every sample; `rss[level]` gets muslind's RSS in MB."""
    nss = Namespaces(f"mb{token(4)}")
    results: list[Sample] = []
    tmp = Path(tempfile.mkdtemp(prefix="muslin-bench-"))
    setups: list[Setup] = []
    try:
        ref = Setup(nss, "ref", tmp, "ref", "10.128.0.0/16")
        mus = Setup(nss, "mus", tmp, "muslin", "10.129.0.0/16")
        setups = [ref, mus]
        mus.start_agent()
        for level in levels:
            t0 = time.time()
            grow(ref, nss, level)
            grow(mus, nss, level, agent=True)
            log(f"  {level} endpoints on each host ({time.time() - t0:.1f}s to grow)")
            room = MAX_BRIDGE_PORTS - level  # measured endpoints come on top of `level`
            variants = [("reference", ref, True, False, False), ("muslin-agent", mus, True, False, False)]
            if (mus.py_dir / "muslin-cni").exists():  # the native forwarder is installed: the Python entry too
                variants.append(("muslin-agent-py", mus, True, True, False))
            variants += [("muslin-inproc", mus, False, False, False), ("muslind-only", mus, True, False, True)]
            for variant, s, agent, py, raw in variants:
                got = measure(s, nss, variant, level, min(samples, room), min(par_samples, room), agent=agent,
                              py=py, raw=raw)
                results.extend(got)
                log("    " + "  ".join(f"{g.verb} p50 {g.p50 * 1e3:.1f}ms" for g in got if "x" not in g.verb)
                    + f"  [{variant}]")
            if rss is not None:
                rss[level] = mus.rss_mb()
        return results
    finally:
        for s in setups:
            s.stop_agent()
        nss.cleanup()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

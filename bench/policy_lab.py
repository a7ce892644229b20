"""Network policy across hosts (`python -m bench.policy_lab [--smoke] [--out DIR]`, as root):
how long a label change on one host takes to be enforced on the other.

A 2-host vxlan lab (real etcd, a muslind per host): x/a on h1 with a TCP server on 80, y/b
on h2 with a prober opening a new connection to x/a every few ms and printing the start time
of the first attempt of each new verdict. A policy (cluster store) isolates x/a and allows
pods labelled role=client of any namespace, and pods of namespaces labelled team=blue.
Each round times, from just before the command to the prober's first attempt with the new
verdict (CLOCK_MONOTONIC, the same in every namespace):
- `muslin lab label LAB y/b role=client` on h2 (the sandbox's host) -> allowed on h1, and
  `role-` -> denied again;
- `muslin namespace --cluster-store URL label y team=blue` -> allowed on h1, `team-` -> denied.
Each includes the command's own run (an interpreter, the CLI's imports, the store write),
also reported alone (`*_command`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ns import token
from bench.policy import PROBER, SERVER, summary

POLICY = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]
  - from: [{namespaceSelector: {matchLabels: {team: blue}}}]
"""


def lab_cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "muslin.lab", *args], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"lab {' '.join(args)}: {r.stderr.strip()}{r.stdout.strip()}")
    return r


def cross_host(rounds: int, log) -> dict:  # type: ignore[no-untyped-def]
    from muslin.lab import core

    name = "bp" + token(4)
    procs: list[subprocess.Popen] = []
    try:
        lab_cli("up", name, "--hosts", "2", "--backend", "vxlan")
        lab_cli("sandbox", name, "h1", "xa", "--namespace", "x", "--label", "pod=a")
        lab_cli("sandbox", name, "h2", "yb", "--namespace", "y", "--label", "pod=b")
        st = core.LabState.load(name)
        xa, yb = st.sandboxes["xa"], st.sandboxes["yb"]

        def cluster(*args: str, input: str | None = None) -> None:
            subprocess.run(["ip", "netns", "exec", core.ns_host(name, "h1"), str(Path(sys.executable).parent / "muslin"),
                            "--state-dir", str(st.host_dir("h1")), args[0], "--cluster-store", st.store_url, *args[1:]],
                           input=input, text=True, capture_output=True, check=True, timeout=60)

        srv = subprocess.Popen(["ip", "netns", "exec", xa["netns"], sys.executable, "-c", SERVER],
                               stdout=subprocess.PIPE, text=True)
        procs.append(srv)
        assert srv.stdout.readline().strip() == "ready"
        prober = subprocess.Popen(["ip", "netns", "exec", yb["netns"], sys.executable, "-u", "-c", PROBER,
                                   xa["address"].split("/")[0]], stdout=subprocess.PIPE, text=True)
        procs.append(prober)

        def wait_for(verdict: int, since: float) -> float:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                t, ok = prober.stdout.readline().split()
                if int(ok) == verdict and float(t) >= since:
                    return float(t) - since
            raise RuntimeError("the prober never saw the new verdict within 30 s")

        wait_for(1, 0)
        cluster("policy", "apply", "-f", "-", input=POLICY)
        wait_for(0, 0)
        out: dict[str, list[float]] = {"pod_label_allowed": [], "pod_label_denied": [],
                                       "namespace_label_allowed": [], "namespace_label_denied": [],
                                       "pod_label_command": [], "namespace_label_command": []}
        for _ in range(rounds):
            for change, verdict, key in (("role=client", 1, "pod_label_allowed"), ("role-", 0, "pod_label_denied")):
                t0 = time.monotonic()
                lab_cli("label", name, "yb", change)
                out["pod_label_command"].append(time.monotonic() - t0)
                out[key].append(wait_for(verdict, t0))
            for change, verdict, key in (("team=blue", 1, "namespace_label_allowed"),
                                         ("team-", 0, "namespace_label_denied")):
                t0 = time.monotonic()
                cluster("namespace", "label", "y", change)
                out["namespace_label_command"].append(time.monotonic() - t0)
                out[key].append(wait_for(verdict, t0))
        res = {k: summary(v) for k, v in out.items()}
        log("  " + "; ".join(f"{k.replace('_', ' ')} p50 {v['p50_ms']} ms max {v['max_ms']} ms" for k, v in res.items()))
        return res
    finally:
        for p in procs:
            p.kill()
            p.wait()
        core.down(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.policy_lab", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one round: that it works, not how fast")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.policy_lab: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    made = "" if os.environ.get("MUSLIN_LAB_DIR") else tempfile.mkdtemp(prefix="mbplab-")
    if made:
        os.environ["MUSLIN_LAB_DIR"] = made
    log = lambda s: print(s, flush=True)  # noqa: E731
    rounds = 1 if a.smoke else 10
    res = {"argv": ["python", "-m", "bench.policy_lab", *(argv if argv is not None else sys.argv[1:])],
           "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load": os.getloadavg()}
    log(f"policy across 2 lab hosts: label change -> enforced on the other host ({rounds} rounds)")
    try:
        res["cross_host"] = cross_host(rounds, log)
    finally:
        if made:
            import shutil

            shutil.rmtree(made, ignore_errors=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "policy_lab.json").write_text(json.dumps(res, indent=2))
    log(f"wrote {out / 'policy_lab.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

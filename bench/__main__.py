"""`python -m bench [--quick] [--out DIR] [--only proc,cni,activation,podman,docker,iperf,lab,converge,wireguard,dns,services]`

Runs as root; every namespace it makes is throwaway and removed at the end. Prints a
table, writes results.json, results.md and PNG plots to --out (default bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench import report

PARTS = ("proc", "cni", "activation", "podman", "docker", "iperf", "lab", "converge", "wireguard", "dns", "services")


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    osr = ""
    try:
        osr = next(ln.split("=", 1)[1].strip('"') for ln in Path("/etc/os-release").read_text().splitlines()
                   if ln.startswith("PRETTY_NAME="))
    except (OSError, StopIteration):
        pass
    return {"os": osr, "kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
            "python": platform.python_version(), "load": os.getloadavg()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts (a couple of minutes)")
    p.add_argument("--smoke", action="store_true", help="tiny counts: that it works, not how fast")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--levels", default="", help="endpoint counts, e.g. 10,100,1000")
    p.add_argument("--samples", type=int, default=0, help="timed ADD/DEL per level and variant")
    return p.parse_args(argv)


def _part(name: str, run, log) -> dict:
    """Run one part of the bench; a failing part is reported as an error row, the rest go on."""
    try:
        return run()
    except Exception as e:  # noqa: BLE001 - one part failing still reports the rest
        log(f"  {name}: {' '.join(str(e).split())[:300]}")
        return {"error": " ".join(str(e).split())[:300]}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if a.smoke:
        levels, samples, par, runs, secs, rounds = [2], 2, 8, 1, 1, 3
    elif a.quick:
        levels, samples, par, runs, secs, rounds = [10, 100], 15, 16, 3, 3, 100
    else:
        levels, samples, par, runs, secs, rounds = [10, 100, 1000], 20, 16, 7, 5, 300  # a bridge: <= 1,023 ports
    if a.levels:
        levels = [int(x) for x in a.levels.split(",") if x]
    samples = a.samples or samples
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": machine(), "argv": ["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])],
                 "levels": levels, "samples": samples, "parallel_samples": par, "started": time.strftime(
                     "%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    log = lambda s: print(s, flush=True)  # noqa: E731
    if "proc" in only:
        from bench.process import run_process
        log(f"plugin process cost ({rounds} calls of each, alternated)")
        res["proc"] = _part("proc", lambda: run_process(rounds, log=log), log)
    if "cni" in only:
        from bench.cni import run_cni
        log(f"CNI ADD/DEL at {levels} endpoints, {samples} timed calls each, {par} with 8 in parallel")
        rss: dict = {}
        phases: dict = {}
        samples_ = run_cni(levels, samples, par, log=log, rss=rss, phases=phases)
        res["cni"] = [s.to_dict() for s in samples_]
        res["muslind_rss_mb"] = {str(k): v for k, v in rss.items()}
        res["muslind_phases"] = {str(k): v for k, v in phases.items()}
    if "activation" in only:
        from bench.activation import run_activation
        log("without a running muslind: in-process vs socket activation vs the reference (first and second ADD)")
        res["activation"] = _part("activation", lambda: run_activation(1 if a.smoke else 5, log=log), log)
    if "podman" in only:
        from bench.podman import run_podman
        log(f"podman run network cost ({runs} runs each)")
        res["podman"] = _part("podman", lambda: run_podman(runs, log=log), log)
    if "docker" in only:
        res["docker"] = docker_part(a.smoke or a.quick, log)
    if "iperf" in only:
        from bench.iperf import run_iperf
        log(f"iperf3 same-host throughput ({secs}s per run)")
        res["iperf"] = _part("iperf", lambda: run_iperf(secs, log=log), log)
    if "lab" in only:
        from bench.iperf import run_iperf_lab
        log(f"iperf3 cross-host in a muslin lab ({secs}s per run)")
        res["lab"] = _part("lab", lambda: run_iperf_lab(secs, log=log), log)
    if "wireguard" in only:
        from bench.wireguard import run_wireguard
        log(f"wireguard vs host-gw on the same two lab hosts ({secs}s per TCP run)")
        res["wireguard"] = _part("wireguard", lambda: run_wireguard(secs, 1 if a.smoke else 3, 60 if a.smoke else 300,
                                                                     2 if a.smoke else 10, log=log), log)
    if "converge" in only:
        from bench.converge import run_converge
        log("control-plane convergence in a 10-host muslin lab (vxlan)")
        res["converge"] = _part("converge", lambda: run_converge(3 if a.smoke else 10, 2 if a.smoke else 10,
                                                                  1 if a.smoke else 3, log=log), log)
    if "dns" in only:
        from bench.dns import run_dns
        log("muslind DNS: latency under load, memory with 10,000 names, attach/detach followed, restart")
        res["dns"] = _part("dns", lambda: run_dns(a.smoke or a.quick, log=log), log)
    if "services" in only:
        from bench.services import run_services
        counts = [10, 50] if a.smoke else [10, 1000] if a.quick else [10, 1000, 10000]
        log(f"service VIPs: full sync, one change, connect through the VIP at {counts} services x 3 endpoints")
        res["services"] = _part("services", lambda: run_services(counts, 20 if a.smoke else 200, log=log), log)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    (out / "results.json").write_text(json.dumps(res, indent=1))
    text = report.table(res)
    print(text)
    (out / "results.md").write_text(report.markdown(res))
    for png in report.plots(res, out):
        print(f"wrote {png}")
    return 0


def docker_part(small: bool, log) -> dict:
    """bench/docker_connect.py (owned by the Docker engineer) if present: its JSON on stdout."""
    script = Path(__file__).parent / "docker_connect.py"
    if not script.exists():
        return {"skipped": "bench/docker_connect.py is not there yet"}
    log("docker network connect+disconnect (bench/docker_connect.py)")
    cmd = [sys.executable, str(script)] + (["--quick"] if small else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=Path(__file__).parent.parent)
    if p.returncode != 0:
        return {"error": (p.stderr.strip() or p.stdout.strip())[-300:], "command": " ".join(cmd)}
    try:
        lines = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("{")]
        got = json.loads(lines[-1])
    except (ValueError, IndexError):
        got = {"output": p.stdout.strip()[-1000:]}
    got["command"] = " ".join(cmd)
    log(f"  docker: {json.dumps(got)[:300]}")
    return got


if __name__ == "__main__":
    sys.exit(main())

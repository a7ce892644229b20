"""`docker network connect` + `disconnect` on a Muslin network vs Docker's own bridge driver.

Run as root: `python bench/docker_connect.py [--quick] [--pairs N]`. Uses the running
Docker engine if `docker info` works, else starts a private containerd + dockerd (and
always its own muslind), like tests/clients/test_docker.py, and removes everything at the
end. One container sits on a Docker bridge network ("base"); each sample connects it to
the target network and disconnects it again; Muslin and bridge samples are interleaved.
Prints a table and, as its last line, one JSON object (read by `python -m bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "clients"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from docker_util import IMAGE, DockerEnv, random_subnet, root_ns_lock  # noqa: E402


def _pair(dk: DockerEnv, net: str, ctr: str) -> float:
    t0 = time.perf_counter()
    dk.docker("network", "connect", net, ctr)
    dk.docker("network", "disconnect", net, ctr)
    return time.perf_counter() - t0


def run(pairs: int, log=print) -> dict:
    tag = secrets.token_hex(3)
    with root_ns_lock():
        dk = DockerEnv()
        try:
            dk.start()
            s1, s2, s3 = random_subnet(), None, None
            s2 = random_subnet(avoid=[s1])
            s3 = random_subnet(avoid=[s1, s2])
            base, mus, brg, ctr = f"mb-base-{tag}", f"mb-muslin-{tag}", f"mb-bridge-{tag}", f"mb-c-{tag}"
            dk.docker("network", "create", "-d", "bridge", "--label", "muslin-test", "--subnet", str(s1), base)
            dk.docker("network", "create", "-d", "muslin", "--ipam-driver", "muslin", "--label", "muslin-test",
                      "--subnet", str(s2), mus)
            dk.docker("network", "create", "-d", "bridge", "--label", "muslin-test", "--subnet", str(s3), brg)
            dk.docker("run", "-d", "--name", ctr, "--label", "muslin-test", "--network", base,
                      "--ulimit", "nofile=1024:1024", IMAGE, "sleep", "3600")
            for net in (mus, brg):  # warm-up (plugin activation, first bridge)
                _pair(dk, net, ctr)
            times: dict[str, list[float]] = {"muslin": [], "bridge": []}
            for _ in range(pairs):
                times["muslin"].append(_pair(dk, mus, ctr))
                times["bridge"].append(_pair(dk, brg, ctr))
            med = {k: statistics.median(v) for k, v in times.items()}
            out = {
                "pairs": pairs,
                "muslin_ms": round(med["muslin"] * 1e3, 1),
                "bridge_ms": round(med["bridge"] * 1e3, 1),
                "ratio": round(med["muslin"] / med["bridge"], 2),
                "muslin_p90_ms": round(sorted(times["muslin"])[int(0.9 * (pairs - 1))] * 1e3, 1),
                "bridge_p90_ms": round(sorted(times["bridge"])[int(0.9 * (pairs - 1))] * 1e3, 1),
                "engine": "private dockerd" if dk.owned else "existing dockerd",
            }
            dk.docker("rm", "-f", ctr, check=False)
            for n in (mus, brg, base):
                dk.docker("network", "rm", n, check=False)
            return out
        finally:
            dk.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10 pairs per driver")
    p.add_argument("--pairs", type=int, default=0, help="connect+disconnect pairs per driver (default 40)")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("docker_connect: needs root", file=sys.stderr)
        return 2
    pairs = a.pairs or (10 if a.quick else 40)
    try:
        res = run(pairs)
    except Exception as e:  # one line, no traceback
        print(f"docker_connect: {' '.join(str(e).split())[:400]}", file=sys.stderr)
        return 1
    print(f"docker network connect+disconnect, median of {pairs} pairs:")
    print(f"  muslin  {res['muslin_ms']:8.1f} ms   (p90 {res['muslin_p90_ms']:.1f} ms)")
    print(f"  bridge  {res['bridge_ms']:8.1f} ms   (p90 {res['bridge_p90_ms']:.1f} ms)")
    print(f"  ratio muslin/bridge {res['ratio']:.2f}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

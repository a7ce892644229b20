"""Service virtual IPs at scale (`python bench/services.py [--smoke] [--counts 10,1000,10000]`,
or `python -m bench --only services`).

In a throwaway host namespace: one network, one real service (a backend sandbox serving TCP,
made through the CLI), then N synthetic services x 3 backends put in the kernel by the
services' full sync (dataplane/nft_services.resync, what muslind runs at start or after the
table was replaced). Measured at each N: that full sync, one change among them (one
service's backend replaced: one batch), and the first-packet cost through the VIP (the
median time of a TCP connect from the host namespace to the real service's VIP, which
every packet's map lookup pays). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.ns import Namespaces, token  # noqa: E402

# Runs inside the host namespace: the synthetic services, the timings.
WORKER = r"""
import ipaddress, json, socket, statistics, sys, time
from muslin.control.hostns import enter
enter(sys.argv[1])
from muslin.control.service import Muslin
from muslin.control.services import ports_of
from muslin.dataplane import nft_services
from muslin.firewall.services import ServiceChanges, SvcPort

m = Muslin(state_dir=sys.argv[2])
counts = [int(x) for x in sys.argv[3].split(",") if x]
real = m.list_services()
real_ports = [p for s in real for p in ports_of(s)]
base = ipaddress.ip_address("10.112.0.0")  # synthetic VIPs (10.112.0.0/12), backends 10.128.0.0/9
def synthetic(n):
    out = []
    for i in range(n):
        b = [ipaddress.ip_address(int(ipaddress.ip_address("10.128.0.0")) + 3 * i + j) for j in range(3)]
        out.append(SvcPort(f"bench/s{i}", base + i, "tcp", 80, 80, tuple(b)))
    return out

res = []
for n in counts:
    ports = synthetic(n)
    vips = [p.vip for p in ports] + [s.vip for s in real]
    local = [b.ip for s in real for b in s.backends]
    t0 = time.perf_counter()
    nft_services.resync(ports + real_ports, vips, local, m.owner)
    sync_s = time.perf_counter() - t0
    if not n:
        continue
    changes = []
    for k in range(5):
        old = ports[(k * 7919) % n]
        new = SvcPort(old.service, old.vip, old.protocol, old.port, old.target,
                      old.backends[:2] + (ipaddress.ip_address(int(old.backends[2]) + 2**20),))
        t0 = time.perf_counter()
        nft_services.apply(ServiceChanges(((old, new),)), m.owner)
        changes.append((time.perf_counter() - t0) * 1000)
        ports[(k * 7919) % n] = new
    res.append({"services": n, "endpoints_per_service": 3, "full_sync_s": round(sync_s, 3),
                "one_change_ms_median": round(statistics.median(changes), 2),
                "one_change_ms_max": round(max(changes), 2)})
print(json.dumps(res))
"""

# Runs in a client sandbox: the median TCP connect time to the VIP, in ms.
CLIENT = r"""
import socket, statistics, sys, time
ts = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(); s.settimeout(5)
    t0 = time.perf_counter()
    s.connect((sys.argv[1], 80))
    ts.append((time.perf_counter() - t0) * 1000)
    s.close()
print(round(statistics.median(ts), 3))
"""

SERVER = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(1024)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""


def muslin_bin() -> str:
    here = Path(sys.executable).parent / "muslin"
    return str(here) if here.exists() else shutil.which("muslin") or "muslin"


def run_services(counts: list[int], connects: int = 200, log=print) -> dict:
    ns = Namespaces(f"mbs-{token(4)}")
    state = tempfile.mkdtemp(prefix="muslin-bench-svc-")
    host = ns.host("host")
    sb, client = f"mbs-b-{token()}", f"mbs-c-{token()}"
    server = None

    def muslin(*args: str) -> str:
        return subprocess.run([muslin_bin(), "--host-netns", host, "--state-dir", state, *args], check=True,
                              capture_output=True, text=True, timeout=300).stdout

    try:
        muslin("network", "create", "bench", "--subnet", "10.181.0.0/24", "--service-range", "10.96.0.0/20")
        muslin("sandbox", "create", sb)
        muslin("connect", "bench", sb, "--label", "app=bench")
        muslin("sandbox", "create", client)
        muslin("connect", "bench", client)
        server = subprocess.Popen(["ip", "netns", "exec", sb, sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                                  text=True)
        assert server.stdout.readline().strip() == "ready"
        vip = json.loads(muslin("service", "create", "real", "--network", "bench", "--port", "80/tcp",
                                "--selector", "app=bench", "-o", "json"))["vip"]
        rows = []
        for n in [*counts, 0]:  # 0: back to the real service alone
            p = subprocess.run([sys.executable, "-c", WORKER, host, state, str(n)], capture_output=True, text=True,
                               timeout=3600)
            if p.returncode != 0:
                raise RuntimeError(p.stderr.strip()[-500:])
            if not n:
                break
            row = json.loads(p.stdout.strip().splitlines()[-1])[0]
            c = subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c", CLIENT, vip, str(connects)],
                               capture_output=True, text=True, timeout=600, check=True)
            row["connect_ms_median"] = float(c.stdout.strip())
            rows.append(row)
            log(f"  services: {row}")
        return {"levels": rows, "connects_per_level": connects}
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        for args in (("service", "rm", "real"), ("sandbox", "rm", sb), ("sandbox", "rm", client),
                     ("network", "rm", "--force", "bench")):
            subprocess.run([muslin_bin(), "--host-netns", host, "--state-dir", state, *args], capture_output=True,
                           timeout=300)
        for n in (sb, client):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        ns.cleanup()
        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/services.py", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny counts: that it works, not how fast")
    p.add_argument("--counts", default="", help="service counts (default 10,1000,10000; --smoke 10,50)")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/services.py: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    counts = [int(x) for x in (a.counts or ("10,50" if a.smoke else "10,1000,10000")).split(",") if x]
    print(json.dumps(run_services(counts, 20 if a.smoke else 200, log=lambda s: print(s, file=sys.stderr))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

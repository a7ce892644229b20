"""What an idle `muslin lab` costs its etcd (issue 14's first goal: at most one new watch
stream and one list per agent over 30 s idle): a lab of N hosts (vxlan; each host's muslind
runs the cluster agent, DNS, the endpoint publisher and the service members), left to
settle, then etcd's own counters (/metrics, read in the underlay namespace) over `seconds`:
new watch streams, range calls (lists and gets), lease renewals, bytes sent.
`python -m bench.lab_idle [--hosts 30] [--seconds 30]` (JSON on stdout)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.ns import lab_dir, token


def _metrics(ns: str, url: str) -> dict[str, float]:
    from muslin.lab.sim import etcd_metrics

    out = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sf", "--max-time", "10", url + "/metrics"],
                         capture_output=True, text=True, check=True).stdout
    return etcd_metrics(out)


def run_lab_idle(hosts: int = 30, seconds: float = 30, settle: float = 10, log=print) -> dict:
    from muslin.lab import core as lab

    with lab_dir("muslin-bench-idle-"):
        name = f"mi{token(4)}"
        try:
            t0 = time.monotonic()
            st = lab.up(name, hosts, "vxlan")
            out: dict = {"hosts": hosts, "up_s": round(time.monotonic() - t0, 1), "seconds": seconds}
            log(f"  {hosts}-host lab up in {out['up_s']} s; settling {settle:.0f} s")
            time.sleep(settle)
            ns, url = lab.ns_ul(name), f"http://{lab.ETCD_IP}:{lab.ETCD_PORT}"
            a = _metrics(ns, url)
            t = time.monotonic()
            time.sleep(seconds)
            b = _metrics(ns, url)
            dt = time.monotonic() - t

            def d(k: str) -> float:
                return b.get(k, 0.0) - a.get(k, 0.0)
            out |= {"new_watch_streams": int(d("grpc_Watch")), "ranges": int(d("grpc_Range")),
                    "lease_renewals": int(d("grpc_LeaseKeepAlive")), "puts": int(d("grpc_Put") + d("grpc_Txn")),
                    "watch_streams_open": int(b.get("etcd_debugging_mvcc_watch_stream_total", 0)),
                    "sent_bytes_per_s": round(d("etcd_network_client_grpc_sent_bytes_total") / dt)}
            out["per_agent"] = {k: round(out[k] / hosts, 2) for k in ("new_watch_streams", "ranges", "lease_renewals")}
            log(f"  idle {seconds:.0f} s: {json.dumps(out)}")
            return out
        finally:
            lab.down(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lab_idle", description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=30)
    p.add_argument("--seconds", type=float, default=30)
    a = p.parse_args(argv)
    print(json.dumps(run_lab_idle(a.hosts, a.seconds, log=lambda m: print(m, file=sys.stderr, flush=True))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

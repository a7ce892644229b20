"""Control-plane convergence in a `muslin lab` (issue 9's last two goals):

- a new sandbox is reachable from a sandbox on another host how soon after its ADD returns
  (pings from the other host every 5 ms, started the moment the ADD returns);
- a new host's routes are on every peer how soon after its agent starts (each peer's
  kernel polled every 20 ms for a route to the new host's subnet), and how soon after its
  record is in etcd (seen by `ip monitor route` on every peer);
- a leaving host's routes are gone from every peer how soon after its agent got SIGUSR1
  (`lab remove-host`; seen by `ip monitor route` on every peer).
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time

from bench.ns import lab_dir, token


def _first_reply_ms(ns: str, addr: str, interval: float = 0.005, deadline: int = 3) -> float | None:
    """Ping from `ns` every `interval` s; ms from the start to the first reply (None: none)."""
    t0 = time.perf_counter()
    p = subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-i", str(interval), "-W", "0.2", "-w",
                        str(deadline), "-c", "1", addr], capture_output=True, text=True)
    if p.returncode != 0:
        return None
    m = re.search(r"icmp_seq=(\d+)", p.stdout)
    seq = int(m.group(1)) if m else 1
    # the reply to request `seq` came at about (seq-1)*interval after the first request
    return min((seq - 1) * interval * 1e3 + 1.0, (time.perf_counter() - t0) * 1e3)


class RouteMonitor:
    """`ip monitor route` in each namespace, each line stamped as it arrives (one reader
    thread per namespace): when each namespace first added or deleted a route to a subnet."""

    def __init__(self, namespaces: list[str]) -> None:
        import threading

        self.procs = [subprocess.Popen(["ip", "-n", ns, "monitor", "route"], stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True) for ns in namespaces]
        self.lines: list[list[tuple[float, str]]] = [[] for _ in namespaces]
        self.threads = [threading.Thread(target=self._read, args=(p, out), daemon=True)
                        for p, out in zip(self.procs, self.lines)]
        for t in self.threads:
            t.start()
        time.sleep(0.3)  # let every monitor subscribe

    @staticmethod
    def _read(p: subprocess.Popen, out: list) -> None:
        for line in p.stdout:  # type: ignore[union-attr]
            out.append((time.perf_counter(), line))

    def first(self, subnet: str, deleted: bool, since: float) -> list[float | None]:
        """Per namespace: when its first route line for `subnet` (an add, or a delete) came."""
        got = []
        for lines in self.lines:
            at = None
            for t, line in list(lines):
                w = line.split()
                hit = (w[:2] == ["Deleted", subnet]) if deleted else (w[:1] == [subnet])
                if t >= since and hit:
                    at = t
                    break
            got.append(at)
        return got

    def wait(self, subnet: str, deleted: bool, since: float, timeout: float = 30) -> list[float | None]:
        end = time.perf_counter() + timeout
        while True:
            got = self.first(subnet, deleted, since)
            if all(g is not None for g in got) or time.perf_counter() > end:
                return got
            time.sleep(0.02)

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _has_route(ns: str, subnet: str) -> bool:
    out = subprocess.run(["ip", "-n", ns, "-j", "route", "show", subnet], capture_output=True, text=True).stdout
    return bool(json.loads(out or "[]"))


def run_converge(hosts: int = 10, sandboxes: int = 10, joins: int = 3, backend: str = "vxlan",
                 log=print) -> dict:
    with lab_dir("muslin-bench-conv-"):
        return _run_converge(hosts=hosts, sandboxes=sandboxes, joins=joins, backend=backend, log=log)


def _run_converge(hosts: int = 10, sandboxes: int = 10, joins: int = 3, backend: str = "vxlan",
                 log=print) -> dict:
    from muslin.lab import core as lab

    name = f"mc{token(4)}"
    out: dict = {"hosts": hosts, "backend": backend}
    try:
        lab.up(name, hosts, backend)
        far = lab.sandbox(name, f"h{hosts}", "far")
        reach = []
        for i in range(sandboxes):
            sb = lab.sandbox(name, "h1", f"s{i}")  # returns when its ADD has returned
            ms = _first_reply_ms(far["netns"], str(sb["address"]).split("/")[0])
            if ms is not None:
                reach.append(ms)
        if not reach:
            raise RuntimeError(f"no new sandbox answered a ping from h{hosts} within 3 s")
        out["sandbox_reachable_ms"] = {"n": len(reach), "p50": statistics.median(reach), "max": max(reach),
                                       "lost": sandboxes - len(reach)}
        log(f"  a new sandbox on h1 answers a ping from h{hosts}: p50 {statistics.median(reach):.0f} ms, "
            f"max {max(reach):.0f} ms ({len(reach)}/{sandboxes})")
        join, seen, joined = [], [], []
        for _ in range(joins):
            st = lab.LabState.load(name)
            mon = RouteMonitor([lab.ns_host(name, p) for p in st.hosts])
            try:
                t0 = time.perf_counter()
                h = lab.add_host(name)
                st = lab.LabState.load(name)
                peers = [lab.ns_host(name, p) for p in st.hosts if p != h]
                subnet, leased = "", None
                while time.perf_counter() - t0 < 30:
                    subnet = lab.host_status(st, h).get("subnet", "")
                    if subnet and leased is None:
                        leased = time.perf_counter()  # its status says it holds its lease: its record is in etcd
                    if subnet and all(_has_route(p, subnet) for p in peers):
                        break
                    time.sleep(0.02)
                end = time.perf_counter()
                join.append(((end - t0) * 1e3, (end - (leased or end)) * 1e3))
                got = mon.wait(subnet, False, t0)
                if all(g is not None for g in got):
                    seen.append((max(got) - t0) * 1e3)  # type: ignore[type-var]
                joined.append((h, subnet))
            finally:
                mon.close()
        total, after = [t for t, _ in join], [a for _, a in join]
        out["host_join_ms"] = {"n": len(join), "p50": statistics.median(total), "max": max(total),
                               "after_record_p50": statistics.median(after), "after_record_max": max(after),
                               "peers": hosts + joins - 1}
        if seen:
            out["host_join_ms"]["monitor_p50"], out["host_join_ms"]["monitor_max"] = statistics.median(seen), max(seen)
        log(f"  a new host's subnet routed on all its peers: p50 {statistics.median(total):.0f} ms from its agent's "
            f"start ({statistics.median(seen) if seen else float('nan'):.0f} ms by ip monitor), "
            f"{statistics.median(after):.0f} ms from its record in etcd (max {max(after):.0f})")
        leave = []
        for h, subnet in joined:
            st = lab.LabState.load(name)
            mon = RouteMonitor([lab.ns_host(name, p) for p in st.hosts if p != h])
            try:
                t0 = time.perf_counter()
                lab.remove_host(name, h, wait=False)  # SIGUSR1 to its agent first: it leaves
                got = mon.wait(subnet, True, t0)
                if all(g is not None for g in got):
                    leave.append((max(got) - t0) * 1e3)  # type: ignore[type-var]
            finally:
                mon.close()
        if leave:
            out["host_leave_ms"] = {"n": len(leave), "p50": statistics.median(leave), "max": max(leave),
                                    "lost": len(joined) - len(leave)}
            log(f"  a leaving host's subnet gone from all its peers: p50 {statistics.median(leave):.0f} ms after "
                f"SIGUSR1, max {max(leave):.0f} ms ({len(leave)}/{len(joined)})")
        return out
    finally:
        lab.down(name)

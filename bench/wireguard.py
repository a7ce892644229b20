"""The wireguard backend against host-gw on the same two lab hosts, in one run.

`python -m bench.wireguard [--seconds 5] [--runs 3] [--pings 300] [--peers 10]` (root).

One `muslin lab` of two hosts runs cluster network net0 with the wireguard backend
(muslind, wireguard-go on TUN); a second cluster network gw0 (host-gw, 10.245.0.0/16) is
joined by a second agent on each of the same two hosts (same state dir, so the same
Muslin table). A sandbox on each host and network, then, alternating wireguard and
host-gw so both see the same background load:
- single-stream TCP: iperf3 -t SECONDS, sandbox on h1 -> sandbox on h2, `runs` each (and
  the CPU the two wireguard-go processes used meanwhile, in cores);
- RTT: `ping -i 0.01` x PINGS, p50 and p95 of the per-reply times; added = wg - host-gw;
- a new peer programmed: a record for a made-up host (a real key pair, an endpoint, a
  subnet) is put into etcd; the time until h1's `wg show` lists the peer and h1 has the
  route to its subnet, PEERS times (each record removed again and its peer seen gone).
The machine's load average is noted before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from bench.iperf import _iperf
from bench.ns import lab_dir, run, token


def _p(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _ping(src: str, dst: str, n: int) -> list[float]:
    p = run("ip", "netns", "exec", src, "ping", "-n", "-i", "0.01", "-c", str(n), "-W", "1", dst, check=False,
            timeout=n * 0.05 + 30)
    return [float(x.split("time=")[1].split()[0]) for x in p.stdout.splitlines() if "time=" in x]


def _put_peer(url: str, net: str, host: str, rec: dict, lease_ttl: int) -> float:
    """Runs in the underlay namespace: the record goes in; returns the wall time just before."""
    from muslin.store.etcd import EtcdStore
    s = EtcdStore([url.removeprefix("etcd://")])
    lease = s.grant_lease(lease_ttl)
    t = time.time()
    s.put(f"cluster/{net}/hosts/{host}", rec, lease=lease)
    return t


def _del_peer(url: str, net: str, host: str) -> None:
    from muslin.store.etcd import EtcdStore
    EtcdStore([url.removeprefix("etcd://")]).delete(f"cluster/{net}/hosts/{host}")


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(f[11]) + int(f[12])) / tick
    return total


def _wg_pids(lab, name: str) -> list[int]:
    out = []
    for h in ("h1", "h2"):
        for pid in run("ip", "netns", "pids", lab.ns_host(name, h)).stdout.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                    out.append(int(pid))
            except OSError:
                pass
    return out


def _keypair() -> str:
    priv = run("wg", "genkey").stdout
    return run("wg", "pubkey", input=priv).stdout.strip()


def _sandbox(lab, name: str, host: str, sb: str, network: str) -> str:
    """A sandbox namespace (named like the lab's, so `lab down` removes it) attached to
    `network` on `host`; returns its address."""
    st = lab.LabState.load(name)
    ns = lab.ns_sandbox(name, sb)
    run("ip", "netns", "add", ns)
    run("ip", "-n", ns, "link", "set", "lo", "up")
    r = run("ip", "netns", "exec", lab.ns_host(name, host), sys.executable, "-m", "muslin.control.agent", "attach",
            "--state-dir", str(st.host_dir(host)), "--network", network, "--id", sb, "--netns", f"/run/netns/{ns}",
            timeout=60)
    return json.loads(r.stdout.strip().splitlines()[-1])["address"].split("/")[0]


def run_wireguard(seconds: int = 5, runs: int = 3, pings: int = 300, peers: int = 10, log=print) -> dict:
    with lab_dir("muslin-bench-wg-"):
        return _run_wireguard(seconds=seconds, runs=runs, pings=pings, peers=peers, log=log)


def _run_wireguard(seconds: int = 5, runs: int = 3, pings: int = 300, peers: int = 10, log=print) -> dict:
    from muslin.dataplane.nsexec import run_in_netns
    from muslin.lab import core as lab

    out: dict = {"seconds": seconds, "runs": runs, "load_before": os.getloadavg()}
    name = f"bw{token(4)}"
    try:
        st = lab.up(name, 2, "wireguard")
        lab.add_network(name, "gw0", "host-gw", vni=2, cidr="10.245.0.0/16")
        for h in st.hosts:
            cmd = [sys.executable, "-m", "muslin.control.agent", "run", "--store", st.store_url, "--network", "gw0",
                   "--hostname", h, "--state-dir", str(st.host_dir(h)), "--underlay-dev", "eth0"]
            st.pids[f"agent-gw0-{h}"] = lab._spawn(lab.ns_host(name, h), cmd, st.dir / f"{h}-gw0.log")
        st.save()
        end = time.monotonic() + 60
        while not all(json.loads((st.host_dir(h) / "cluster" / "gw0.status.json").read_text()).get("peers")
                      if (st.host_dir(h) / "cluster" / "gw0.status.json").exists() else False for h in st.hosts):
            if time.monotonic() > end:
                raise RuntimeError("the host-gw agents did not converge")
            time.sleep(0.2)
        wb = lab.sandbox(name, "h2", "b")
        lab.sandbox(name, "h1", "a")
        _sandbox(lab, name, "h1", "ga", "gw0")
        gb = _sandbox(lab, name, "h2", "gb", "gw0")
        ip = {"wireguard": (lab.ns_sandbox(name, "a"), wb["netns"], wb["address"].split("/")[0]),
              "host-gw": (lab.ns_sandbox(name, "ga"), lab.ns_sandbox(name, "gb"), gb)}
        for k, (src, dst, addr) in ip.items():  # warm up: handshakes, ARP
            _ping(src, addr, 5)
        tcp: dict[str, list[float]] = {k: [] for k in ip}
        rtt: dict[str, list[float]] = {k: [] for k in ip}
        wgo = _wg_pids(lab, name)
        cores = []
        for _ in range(runs):
            for k, (src, dst, addr) in ip.items():
                c0, t0 = _cpu(wgo), time.monotonic()
                tcp[k].append(_iperf(dst, src, addr, seconds))
                if k == "wireguard":  # what the two wireguard-go processes used meanwhile
                    cores.append((_cpu(wgo) - c0) / (time.monotonic() - t0))
                rtt[k] += _ping(src, addr, pings // runs)
        out["wireguard_go_cpu_cores"] = statistics.median(cores)
        for k in ip:
            out[f"{k}_tcp_gbps"] = statistics.median(tcp[k])
            out[f"{k}_tcp_gbps_all"] = [round(x, 3) for x in tcp[k]]
            out[f"{k}_rtt_p50_ms"] = _p(rtt[k], 0.5)
            out[f"{k}_rtt_p95_ms"] = _p(rtt[k], 0.95)
            out[f"{k}_pings"] = len(rtt[k])
        out["tcp_ratio"] = out["wireguard_tcp_gbps"] / out["host-gw_tcp_gbps"]
        out["added_rtt_p50_ms"] = out["wireguard_rtt_p50_ms"] - out["host-gw_rtt_p50_ms"]
        log(f"  TCP wireguard {out['wireguard_tcp_gbps']:.2f} Gbit/s, host-gw {out['host-gw_tcp_gbps']:.2f} "
            f"({out['tcp_ratio'] * 100:.0f}%); RTT p50 {out['wireguard_rtt_p50_ms']:.3f} vs "
            f"{out['host-gw_rtt_p50_ms']:.3f} ms (+{out['added_rtt_p50_ms']:.3f}); the two wireguard-go used "
            f"{out['wireguard_go_cpu_cores']:.2f} cores during the wireguard runs")
        # a new peer, from its record to h1's kernel
        st = lab.LabState.load(name)
        ifname = lab.host_status(st, "h1")["companions"]["wireguard"]["ifname"]
        h1 = lab.ns_host(name, "h1")
        ul = f"/run/netns/{lab.ns_ul(name)}"
        times = []
        for i in range(peers):
            key = _keypair()
            host, subnet = f"px{i}", f"10.244.{200 + i}.0/24"
            rec = {"hostname": host, "subnet": subnet, "underlay": f"10.250.0.{200 + i}",
                   "underlay_net": "10.250.0.0/24",
                   "published": {"public_key": key, "endpoint": f"10.250.0.{200 + i}:51820"}}
            t0 = run_in_netns(ul, _put_peer, st.store_url, "net0", host, rec, 600)
            end = time.monotonic() + 10
            while time.monotonic() < end:
                if key in run("wg", "show", ifname, "peers", check=False).stdout and \
                        subnet in run("ip", "-n", h1, "route", "show", subnet, check=False).stdout:
                    times.append(time.time() - t0)
                    break
                time.sleep(0.005)
            else:
                raise RuntimeError(f"peer {host} was not programmed on h1 within 10 s")
            run_in_netns(ul, _del_peer, st.store_url, "net0", host)
            end = time.monotonic() + 10
            while key in run("wg", "show", ifname, "peers", check=False).stdout and time.monotonic() < end:
                time.sleep(0.02)
        out["new_peer_s"] = [round(t, 3) for t in times]
        out["new_peer_p50_s"] = statistics.median(times)
        out["new_peer_max_s"] = max(times)
        log(f"  new peer programmed on h1 {out['new_peer_p50_s'] * 1000:.0f} ms p50, "
            f"{out['new_peer_max_s'] * 1000:.0f} ms max after its record ({peers} peers)")
        out["load_after"] = os.getloadavg()
        return out
    finally:
        lab.down(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wireguard", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--pings", type=int, default=300)
    p.add_argument("--peers", type=int, default=10)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    res = run_wireguard(a.seconds, a.runs, a.pings, a.peers, log=lambda s: print(s, flush=True))
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

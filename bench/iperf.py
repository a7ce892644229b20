"""iperf3 throughput: a raw veth pair vs two sandboxes on one Muslin bridge (same host),
everything in throwaway namespaces (the Muslin side inside a namespace playing the host)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ns import Namespaces, lab_dir, run, token

VENV_BIN = Path(sys.executable).parent


def _iperf(server: str, client: str, ip: str, seconds: int) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-B", ip],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # until the server listens
            if ":5201" in run("ip", "netns", "exec", server, "ss", "-ltnH", check=False).stdout:
                break
            time.sleep(0.05)
        p = run("ip", "netns", "exec", client, "iperf3", "-c", ip, "-t", str(seconds), "-J", check=False,
                timeout=seconds + 30)
        try:
            return json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
        except (ValueError, KeyError) as e:
            raise RuntimeError(f"iperf3 to {ip} failed: {p.stdout[-300:]} {p.stderr[-300:]}") from e
    finally:
        srv.kill()
        srv.wait()


def raw_pair(nss: Namespaces) -> tuple[str, str]:
    """Two namespaces joined by a bare veth pair (10.131.0.1 - 10.131.0.2): the baseline."""
    a, b = nss.host("ra"), nss.host("rb")
    ia, ib = f"v{token(4)}a", f"v{token(4)}b"
    run("ip", "-n", a, "link", "add", ia, "type", "veth", "peer", "name", ib, "netns", b)
    run("ip", "-n", a, "addr", "add", "10.131.0.1/24", "dev", ia)
    run("ip", "-n", b, "addr", "add", "10.131.0.2/24", "dev", ib)
    run("ip", "-n", a, "link", "set", ia, "up")
    run("ip", "-n", b, "link", "set", ib, "up")
    return a, b


def hand_built_two_hosts(nss: Namespaces) -> tuple[str, str, str]:
    """The path host-gw makes, built by hand with `ip` and no firewall: sandbox -veth-> a bridge
    on host 1 -> routed over an underlay bridge -> host 2's bridge -veth-> sandbox. Returns
    (sandbox 1, sandbox 2, sandbox 2's address)."""
    ul, h1, h2, s1, s2 = (nss.host(r) for r in ("hul", "hh1", "hh2", "hs1", "hs2"))
    run("ip", "-n", ul, "link", "add", "br0", "type", "bridge")
    run("ip", "-n", ul, "link", "set", "br0", "up")
    for i, (h, s) in enumerate(((h1, s1), (h2, s2)), start=1):
        run("ip", "-n", ul, "link", "add", f"u{i}", "type", "veth", "peer", "name", "eth0", "netns", h)
        run("ip", "-n", ul, "link", "set", f"u{i}", "master", "br0", "up")
        run("ip", "-n", h, "addr", "add", f"10.134.0.{i}/24", "dev", "eth0")
        run("ip", "-n", h, "link", "set", "eth0", "up")
        run("ip", "-n", h, "link", "add", "br1", "type", "bridge")
        run("ip", "-n", h, "addr", "add", f"10.135.{i}.1/24", "dev", "br1")
        run("ip", "-n", h, "link", "set", "br1", "up")
        run("ip", "-n", h, "link", "add", "v0", "type", "veth", "peer", "name", "eth0", "netns", s)
        run("ip", "-n", h, "link", "set", "v0", "master", "br1", "up")
        run("ip", "-n", s, "addr", "add", f"10.135.{i}.2/24", "dev", "eth0")
        run("ip", "-n", s, "link", "set", "eth0", "up")
        run("ip", "-n", s, "route", "add", "default", "via", f"10.135.{i}.1")
        run("ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        other = 3 - i
        run("ip", "-n", h, "route", "add", f"10.135.{other}.0/24", "via", f"10.134.0.{other}")
    return s1, s2, "10.135.2.2"


def run_iperf(seconds: int, log=print) -> dict:
    nss = Namespaces(f"mi{token(4)}")
    tmp = Path(tempfile.mkdtemp(prefix="muslin-bench-iperf-"))
    agent = None
    try:
        a, b = raw_pair(nss)
        host, c1, c2 = nss.host("mh"), nss.host("m1"), nss.host("m2")
        conf = json.dumps({"cniVersion": "1.0.0", "name": f"mi{token(4)}", "type": "muslin-cni",
                           "isGateway": True, "ipMasq": True,
                           "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": "10.132.0.0/24"}]]}})
        ips = {}
        # One sandbox attached in-process, the other through muslind (the agent path).
        sock = tmp / "muslind.sock"
        log_f = open(tmp / "muslind.log", "w")
        agent = subprocess.Popen(["ip", "netns", "exec", host, str(VENV_BIN / "muslind"), "--docker-socket", "",
                                  "--agent-socket", str(sock), "--state-dir", str(tmp / "state"),
                                  "--reconcile-interval", "0", "--log-level", "warning"], stdout=log_f, stderr=log_f)
        deadline = time.time() + 30
        while not sock.exists():
            if agent.poll() is not None or time.time() > deadline:
                raise RuntimeError("muslind did not start: " + (tmp / "muslind.log").read_text()[-300:])
            time.sleep(0.05)
        for c, s in ((c1, tmp / "none.sock"), (c2, sock)):
            env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": c, "CNI_NETNS": f"/run/netns/{c}", "CNI_IFNAME": "eth0",
                   "CNI_PATH": f"{VENV_BIN}:/usr/lib/cni", "MUSLIN_STATE_DIR": str(tmp / "state"),
                   "MUSLIN_AGENT_SOCKET": str(s), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            p = subprocess.run(["ip", "netns", "exec", host, str(VENV_BIN / "muslin-cni")], input=conf, env=env,
                               text=True, capture_output=True, timeout=60)
            if p.returncode != 0:
                raise RuntimeError(f"muslin-cni ADD failed: {p.stdout} {p.stderr}")
            ips[c] = json.loads(p.stdout)["ips"][0]["address"].split("/")[0]
        out = {"seconds": seconds}
        # Alternate so both see the same background load; best of two each.
        raw, br = [], []
        for _ in range(2):
            raw.append(_iperf(b, a, "10.131.0.2", seconds))
            br.append(_iperf(c2, c1, ips[c2], seconds))
        out["raw_veth_gbps"] = max(raw)
        out["muslin_bridge_gbps"] = max(br)
        out["ratio"] = out["muslin_bridge_gbps"] / out["raw_veth_gbps"]
        # Diagnostic: the same bridge with bridged frames kept out of netfilter (br_netfilter,
        # loaded by Docker here, sends them through conntrack and Muslin's table).
        nf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        if run("ip", "netns", "exec", host, "cat", nf, check=False).stdout.strip() == "1":
            run("ip", "netns", "exec", host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0")
            out["bridge_no_br_netfilter_gbps"] = max(_iperf(c2, c1, ips[c2], seconds) for _ in range(2))
        log(f"  iperf3: raw veth {out['raw_veth_gbps']:.1f} Gbit/s, Muslin bridge {out['muslin_bridge_gbps']:.1f} "
            f"Gbit/s ({out['ratio'] * 100:.0f}%)")
        return out
    finally:
        if agent is not None and agent.poll() is None:
            agent.terminate()
            agent.wait(10)
        nss.cleanup()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def run_iperf_lab(seconds: int, backends: tuple[str, ...] = ("vxlan", "host-gw"), log=print) -> dict:
    with lab_dir("muslin-bench-lab-"):
        return _run_iperf_lab(seconds, backends, log)


def _run_iperf_lab(seconds: int, backends: tuple[str, ...] = ("vxlan", "host-gw"), log=print) -> dict:
    """Cross-host throughput in a `muslin lab` of two hosts per backend (sandbox on h1 to
    sandbox on h2), next to a raw veth pair measured in the same run."""
    try:
        from muslin.lab import core as lab
    except ImportError as e:
        return {"skipped": f"muslin lab is not available: {e}"}
    out: dict = {"seconds": seconds}
    nss = Namespaces(f"mi{token(4)}")
    try:
        a, b = raw_pair(nss)
        out["raw_veth_gbps"] = _iperf(b, a, "10.131.0.2", seconds)
        hs1, hs2, hip = hand_built_two_hosts(nss)
        out["hand_built_two_hosts_gbps"] = _iperf(hs2, hs1, hip, seconds)
        for backend in backends:
            name = f"mb{token(4)}"
            try:
                lab.up(name, 2, backend)
                lab.sandbox(name, "h1", "a")
                sb = lab.sandbox(name, "h2", "b")
                st = lab.LabState.load(name)
                ip = str(sb["address"]).split("/")[0]
                out[f"{backend}_gbps"] = _iperf(sb["netns"], st.sandboxes["a"]["netns"], ip, seconds)
                log(f"  iperf3 cross-host {backend}: {out[f'{backend}_gbps']:.1f} Gbit/s "
                    f"(raw veth {out['raw_veth_gbps']:.1f})")
            except Exception as e:  # noqa: BLE001 - report and go on with the next backend
                out[f"{backend}_error"] = " ".join(str(e).split())[:300]
                log(f"  iperf3 cross-host {backend}: {out[f'{backend}_error']}")
            finally:
                lab.down(name)
        return out
    finally:
        nss.cleanup()

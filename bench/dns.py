"""muslind's DNS (`python -m bench --only dns`): answer latency under load, memory with
10,000 names, how fast answers follow attach/detach, forwarding, and a restart under load.

A throwaway host namespace with one bridge network and muslind (DNS on the gateway, its
upstream a fake server this bench starts on 127.0.0.53 in that namespace); CLI sandboxes;
the load generator runs inside a sandbox (one UDP socket, queries paced at a fixed rate,
answers matched by id; latency = answer time - send time).
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ns import Namespaces, run, token

VENV = Path(sys.executable).parent

LOAD = r"""
import json, os, select, socket, struct, sys, time
server, name, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
def query(qid):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((server, 53)); s.setblocking(False)
n = int(rate * seconds); sent = {}; lat = []; bad = 0
t0 = time.monotonic() + 0.05; i = 0; end = t0 + seconds + 2.0
while time.monotonic() < end and (i < n or sent):
    now = time.monotonic()
    while i < n and t0 + i / rate <= now:
        qid = i % 65536
        try:
            s.send(query(qid)); sent[qid] = time.monotonic()
        except BlockingIOError:
            pass
        i += 1
    wait = max(0.0, min(t0 + i / rate, end) - time.monotonic()) if i < n else 0.05
    r, _, _ = select.select([s], [], [], wait)
    if r:
        while True:
            try:
                data = s.recv(4096)
            except (BlockingIOError, ConnectionRefusedError):
                break
            qid, flags, _, an = struct.unpack_from("!HHHH", data)
            t = sent.pop(qid, None)
            if t is not None:
                lat.append((time.monotonic() - t) * 1000)
                if flags & 0xF or an == 0:
                    bad += 1
lat.sort()
pick = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
print(json.dumps({"sent": i, "answered": len(lat), "lost": len(sent), "bad": bad,
                  "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": lat[-1] if lat else None,
                  "rate": rate, "seconds": seconds}))
"""

UPSTREAM = r"""
import socket, struct, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    data, peer = u.recvfrom(4096)
    qid, flags = struct.unpack_from("!HH", data)
    end = 12
    while data[end]:
        end += data[end] + 1
    q = data[12:end + 5]
    if q[:15].lower() != b"\x08upstream\x04test\x00":
        u.sendto(struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + q, peer)  # NXDOMAIN
        continue
    u.sendto(struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + q
             + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 7]), peer)
"""

# Polls NAME until ADDR appears (mode "in"), is gone ("out") or any address shows ("any");
# prints the wall clock time of that answer.
FOLLOW = r"""
import json, socket, struct, sys, time
server, name, addr, mode = sys.argv[1:5]
def ask():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    s.sendto(q + b"\0" + struct.pack("!HH", 1, 1), (server, 53))
    try:
        data = s.recv(4096)
    except OSError:
        return None
    finally:
        s.close()
    an = struct.unpack_from("!H", data, 6)[0]
    start = len(data) - 16 * an  # A records, name compressed: 16 bytes each, the address last
    return [socket.inet_ntoa(data[start + 16 * k + 12:start + 16 * k + 16]) for k in range(an)]
print("ready", flush=True)
end = time.monotonic() + 30
while time.monotonic() < end:
    try:
        got = ask()
    except Exception:
        got = None
    if got is not None and (bool(got) if mode == "any" else (addr in got) == (mode == "in")):
        print(json.dumps({"t": time.time()})); sys.exit(0)
    time.sleep(0.002)
print(json.dumps({"t": None}))
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class World:
    def __init__(self, log) -> None:
        self.log = log
        self.ns = Namespaces(f"mbd-{token()}")
        self.host = self.ns.host("h")
        self.dir = Path(tempfile.mkdtemp(prefix="mbdns-"))
        self.state = self.dir / "state"
        (self.dir / "resolv.conf").write_text("nameserver 127.0.0.53\n")
        self.upstream = subprocess.Popen(["ip", "netns", "exec", self.host, sys.executable, "-c", UPSTREAM,
                                          "127.0.0.53"], stdout=subprocess.PIPE, text=True)
        assert "ready" in self.upstream.stdout.readline()
        self.sandboxes: list[str] = []
        self.muslind: subprocess.Popen | None = None

    def muslin(self, *args: str) -> str:
        return run(str(VENV / "muslin"), "--host-netns", self.host, "--state-dir", str(self.state), *args).stdout

    def start(self, handover: float = 0) -> int:
        marker = self.state / "dns.pid"
        marker.unlink(missing_ok=True)
        log = open(self.dir / "muslind.log", "a")
        self.muslind = subprocess.Popen(
            ["ip", "netns", "exec", self.host, str(VENV / "muslind"), "--docker-socket", "", "--agent-socket",
             str(self.dir / "agent.sock"), "--state-dir", str(self.state), "--reconcile-interval", "0",
             "--log-level", "warning", "--resolv-conf", str(self.dir / "resolv.conf"),
             "--dns-handover", str(handover)], stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < end:
            time.sleep(0.02)
        return self.muslind.pid

    def stop(self) -> None:
        if self.muslind and self.muslind.poll() is None:
            self.muslind.send_signal(signal.SIGTERM)
            self.muslind.wait(30)

    def bulk(self, net: str, names: list[str], aliases: int = 0) -> None:
        """Sandboxes connected to `net`, each with `aliases` more names, made by one process."""
        code = ("import sys\nfrom muslin.control.hostns import enter\nenter(sys.argv[1])\n"
                "from muslin.control import sandboxes\nfrom muslin.control.service import Muslin\n"
                "m = Muslin(state_dir=sys.argv[2]); k = int(sys.argv[4])\n"
                "for n in sys.argv[5:]:\n"
                "    sandboxes.create(m, n)\n"
                "    sandboxes.connect(m, sys.argv[3], n, aliases=tuple(f'{n}-a{j}' for j in range(k)))\n")
        self.sandboxes += names
        for i in range(0, len(names), 50):
            run(sys.executable, "-c", code, self.host, str(self.state), net, str(aliases), *names[i:i + 50],
                timeout=1800)

    def records(self, net: str, n: int, subnet_base: str) -> None:
        """n endpoint records (name e<i>, one address each) written to the store: what DNS reads,
        without kernel objects (10,000 veths are not the point here)."""
        code = ("import sys, ipaddress\nfrom muslin.store import open_store\nfrom muslin.model import keys\n"
                "from muslin.model.types import Endpoint\nfrom muslin.store.base import Put\n"
                "st = open_store(sys.argv[1]); net = sys.argv[2]; n = int(sys.argv[3])\n"
                "base = ipaddress.ip_network(sys.argv[4])\n"
                "ops = []\n"
                "for i in range(n):\n"
                "    a = ipaddress.ip_interface(f'{base[i + 256]}/{base.prefixlen}')\n"
                "    ep = Endpoint(net, f'syn{i}', f'syn{i}', 'eth0', '', '', '', (a,), name=f'e{i}')\n"
                "    ops.append(Put(keys.endpoint(net, ep.endpoint_id), ep.to_dict()))\n"
                "    if len(ops) == 500:\n"
                "        st.txn([], ops); ops = []\n"
                "if ops: st.txn([], ops)\n")
        run(sys.executable, "-c", code, str(self.state), net, str(n), subnet_base)

    def drop_records(self, net: str) -> None:
        code = ("import sys\nfrom muslin.store import open_store\nst = open_store(sys.argv[1])\n"
                "print(st.delete_prefix(f'endpoints/{sys.argv[2]}/syn'))\n")
        run(sys.executable, "-c", code, str(self.state), net)

    def load(self, sb: str, server: str, name: str, rate: float, seconds: float) -> dict:
        out = run("ip", "netns", "exec", sb, sys.executable, "-c", LOAD, server, name, str(rate), str(seconds),
                  timeout=seconds + 60).stdout
        return json.loads(out.strip().splitlines()[-1])

    def follow(self, sb: str, server: str, name: str, addr: str, mode: str, action) -> float:
        p = subprocess.Popen(["ip", "netns", "exec", sb, sys.executable, "-c", FOLLOW, server, name, addr, mode],
                             stdout=subprocess.PIPE, text=True)
        assert "ready" in p.stdout.readline()
        action()
        t_done = time.time()
        out = json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1])
        return round(max(0.0, (out["t"] or float("nan")) - t_done) * 1000, 1)

    def cleanup(self) -> None:
        self.stop()
        self.upstream.kill()
        self.upstream.wait()
        code = ("import sys\nfrom muslin.control.hostns import enter\nenter(sys.argv[1])\n"
                "from muslin.control import sandboxes\nfrom muslin.control.service import Muslin\n"
                "m = Muslin(state_dir=sys.argv[2])\n"
                "for n in sys.argv[3:]:\n    sandboxes.remove(m, n)\n"
                "for n in m.list_networks():\n    m.delete_network(n.name, force=True)\n")
        run(sys.executable, "-c", code, self.host, str(self.state), *self.sandboxes, check=False, timeout=1800)
        self.ns.cleanup()
        subprocess.run(["rm", "-rf", str(self.dir)])


def wait_answer(w: World, sb: str, server: str, name: str) -> None:
    p = subprocess.Popen(["ip", "netns", "exec", sb, sys.executable, "-c", FOLLOW, server, name, "", "any"],
                         stdout=subprocess.PIPE, text=True)
    p.communicate(timeout=60)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def run_dns(quick: bool = False, log=print) -> dict:
    secs = 3.0 if quick else 10.0
    w = World(log)
    res: dict = {"seconds_per_load": secs}
    try:
        net = f"b{token(4)}"
        w.muslin("network", "create", net, "--subnet", "10.180.0.0/16")
        gw = "10.180.0.1"
        w.bulk(net, ["mbd-c-" + token(), "mbd-t-" + token()])
        client, target = w.sandboxes
        pid = w.start()
        res["rss_mb_start"] = rss_mb(pid)
        for rate in (100, 1000):
            r = w.load(client, gw, target, rate, secs)
            res[f"local_{rate}qps"] = r
            log(f"  local name at {rate} q/s: {r}")
        r = w.load(client, gw, "upstream.test", 200, secs)
        res["forward_200qps"] = r
        log(f"  forwarded name at 200 q/s: {r}")
        # attach/detach followed: from the CLI call's return to the first answer that shows it
        adds, dels = [], []
        for i in range(3 if quick else 10):
            sb = f"mbd-f{i}-{token()}"
            w.muslin("sandbox", "create", sb)
            w.sandboxes.append(sb)
            holder: dict = {}

            def attach() -> None:
                holder["ip"] = json.loads(w.muslin("connect", net, sb, "--alias", "moving", "-o", "json"))[
                    "addresses"][0].split("/")[0]
            # the address is known only after connect: ask for the alias until any address shows
            p = subprocess.Popen(["ip", "netns", "exec", client, sys.executable, "-c", FOLLOW, gw, "moving",
                                  "", "any"], stdout=subprocess.PIPE, text=True)
            assert "ready" in p.stdout.readline()
            attach()
            t_done = time.time()
            out = json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1])
            adds.append(max(0.0, out["t"] - t_done) * 1000 if out["t"] else float("nan"))
            dels.append(w.follow(client, gw, "moving", holder["ip"], "out",
                                 lambda: w.muslin("disconnect", net, sb)))
        res["attach_to_answer_ms"] = {"median": round(statistics.median(adds), 1), "max": round(max(adds), 1),
                                      "n": len(adds)}
        res["detach_to_gone_ms"] = {"median": round(statistics.median(dels), 1), "max": round(max(dels), 1),
                                    "n": len(dels)}
        log(f"  attach -> answered: {res['attach_to_answer_ms']}; detach -> gone: {res['detach_to_gone_ms']}")
        # a restart (SIGTERM, start) under 100 q/s: the sockets go to a holder and back
        w.stop()
        w.start(handover=60)
        loader = subprocess.Popen(["ip", "netns", "exec", client, sys.executable, "-c", LOAD, gw, target, "100",
                                   str(secs + 4)], stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        t0 = time.monotonic()
        w.stop()
        w.start(handover=0)
        res["restart_s"] = round(time.monotonic() - t0, 2)
        r = json.loads(loader.communicate(timeout=120)[0].strip().splitlines()[-1])
        res["restart_under_100qps"] = r
        log(f"  restart under 100 q/s (restart took {res['restart_s']} s): {r}")
        # memory, each on a fresh muslind: 10,000 endpoint records (one name each: what DNS reads, no
        # kernel objects), then 100 real endpoints with 99 aliases each (10,000 names)
        w.stop()
        w.start()
        base = rss_mb(w.muslind.pid)  # type: ignore[union-attr]
        w.records(net, 10000, "10.180.0.0/16")
        wait_answer(w, client, gw, "e9999")
        res["endpoints_10000_records"] = {"rss_mb_before": base, "rss_mb": rss_mb(w.muslind.pid)}  # type: ignore[union-attr]
        r = w.load(client, gw, "e5000", 1000, secs)
        res["endpoints_10000_records"]["local_1000qps"] = r
        log(f"  10,000 endpoint records: {res['endpoints_10000_records']}")
        w.drop_records(net)
        w.stop()
        w.start()
        base = rss_mb(w.muslind.pid)  # type: ignore[union-attr]
        w.bulk(net, [f"mbd-n{i}-{token()}" for i in range(100)], aliases=99)
        wait_answer(w, client, gw, w.sandboxes[-1] + "-a98")
        res["names_10000_real"] = {"rss_mb_before": base, "rss_mb": rss_mb(w.muslind.pid)}  # type: ignore[union-attr]
        r = w.load(client, gw, w.sandboxes[-1] + "-a50", 1000, secs)
        res["names_10000_real"]["local_1000qps"] = r
        log(f"  10,000 names on 100 endpoints: {res['names_10000_real']}")
    finally:
        w.cleanup()
    return res


if __name__ == "__main__":
    print(json.dumps(run_dns("--quick" in sys.argv), indent=1))

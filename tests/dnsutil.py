"""DNS helpers for tests: a fake upstream server and query clients (dnspython), run inside
test namespaces. Never a real resolver: the upstream is a process the test starts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# A fake upstream: answers NAME.test A with the address given for it, big.test TXT with
# ~2 KB (over 512 bytes: TC on UDP), fail.test with SERVFAIL, anything else NXDOMAIN; with
# --silent it reads and never answers (a dead server that times out). Logs each question.
UPSTREAM = r"""
import socket, struct, sys, threading
import dns.message, dns.rcode, dns.rrset, dns.flags
addr, log, silent = sys.argv[1], open(sys.argv[2], "a", buffering=1), "--silent" in sys.argv
names = dict(a.split("=", 1) for a in sys.argv[3:] if "=" in a)

def answer(data):
    q = dns.message.from_wire(data)
    qn = q.question[0]
    name = str(qn.name).rstrip(".").lower()
    log.write(f"{name} {dns.rdatatype.to_text(qn.rdtype)}\n")
    if silent:
        return None
    r = dns.message.make_response(q)
    r.flags |= dns.flags.RA
    if name == "fail.test":
        r.set_rcode(dns.rcode.SERVFAIL)
    elif name == "big.test" and qn.rdtype == dns.rdatatype.TXT:
        r.answer.append(dns.rrset.from_text(qn.name, 60, "IN", "TXT", *[f'"{c * 200}"' for c in "abcdefghij"]))
    elif name in names and qn.rdtype == dns.rdatatype.A:
        r.answer.append(dns.rrset.from_text(qn.name, 60, "IN", "A", names[name]))
    elif name not in names:
        r.set_rcode(dns.rcode.NXDOMAIN)
    return r.to_wire(max_size=65535)

u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((addr, 53))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((addr, 53)); t.listen(8)

def tcp():
    while True:
        c, _ = t.accept()
        try:
            n = struct.unpack("!H", c.recv(2))[0]
            data = b""
            while len(data) < n:
                data += c.recv(n - len(data))
            out = answer(data)
            if out is not None:
                c.sendall(struct.pack("!H", len(out)) + out)
        finally:
            c.close()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while True:
    data, peer = u.recvfrom(65535)
    out = answer(data)
    if out is not None:
        u.sendto(out, peer)
"""

# One query, printed as JSON: {"rcode", "answers": [...], "tc", "ms"} (or {"error"}).
QUERY = r"""
import json, sys, time
import dns.message, dns.query, dns.rcode, dns.flags, dns.exception
server, name, rdtype, proto = sys.argv[1:5]
q = dns.message.make_query(name, rdtype)
t0 = time.monotonic()
try:
    r = (dns.query.tcp if proto == "tcp" else dns.query.udp)(q, server, timeout=float(sys.argv[5]))
except (dns.exception.Timeout, OSError) as e:
    print(json.dumps({"error": type(e).__name__})); sys.exit(0)
print(json.dumps({"rcode": dns.rcode.to_text(r.rcode()), "tc": bool(r.flags & dns.flags.TC),
                  "answers": [str(x) for rr in r.answer for x in rr], "ttl": [rr.ttl for rr in r.answer],
                  "ms": (time.monotonic() - t0) * 1000}))
"""

# N queries, one after the other, every `gap` seconds: JSON {"answers": [answer list, or None for
# no answer], "ms": [each query's time]}.
LOOP = r"""
import json, sys, time
import dns.message, dns.query, dns.exception
server, name, n, gap, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
out, ms = [], []
print("started", flush=True)
for i in range(n):
    t0 = time.monotonic()
    try:
        r = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=timeout)
        out.append([str(x) for rr in r.answer for x in rr])
    except (dns.exception.Timeout, OSError) as e:
        out.append(None)
    ms.append((time.monotonic() - t0) * 1000)
    time.sleep(max(0.0, gap - (time.monotonic() - t0)))
print(json.dumps({"answers": out, "ms": ms}), flush=True)
"""


class Upstream:
    """The fake upstream, in namespace `ns` on `addr` port 53."""

    def __init__(self, ns, addr: str, log: Path, *names: str, silent: bool = False) -> None:
        self.log = log
        self.proc = ns.popen(sys.executable, "-c", UPSTREAM, addr, str(log), *names,
                             *(["--silent"] if silent else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        if "ready" not in self.proc.stdout.readline():
            self.stop()
            raise RuntimeError(f"upstream did not start: {self.proc.stderr.read()}")

    def questions(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def query(ns, server: str, name: str, rdtype: str = "A", proto: str = "udp", timeout: float = 5) -> dict:
    r = ns.run(sys.executable, "-c", QUERY, server, name, rdtype, proto, str(timeout), check=False,
               timeout=timeout + 30)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"query failed: {r.stderr}") from None


def answers(ns, server: str, name: str, rdtype: str = "A") -> list[str]:
    return sorted(query(ns, server, name, rdtype).get("answers", []))


def wait_answers(ns, server: str, name: str, want, timeout: float = 10) -> tuple[list[str], float]:
    """Ask until the answers are `want` (a list, or a predicate); returns them and the seconds it took."""
    t0 = time.monotonic()
    while True:
        got = answers(ns, server, name)
        if (want(got) if callable(want) else got == sorted(want)) or time.monotonic() - t0 > timeout:
            return got, time.monotonic() - t0
        time.sleep(0.05)


# Asks for NAME every few ms until ADDR is not in the answer (or no answer); prints the wall
# clock time of that answer.
GONE = r"""
import json, sys, time
import dns.message, dns.query, dns.exception
server, name, addr, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
print("ready", flush=True)
end = time.monotonic() + limit
while time.monotonic() < end:
    try:
        r = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=2)
        got = [str(x) for rr in r.answer for x in rr]
    except (dns.exception.Timeout, OSError):
        continue
    if addr not in got:
        print(json.dumps({"t": time.time(), "answers": got}), flush=True)
        sys.exit(0)
    time.sleep(0.005)
print(json.dumps({"t": None}), flush=True)
"""


def watch_gone(ns, server: str, name: str, addr: str, limit: float = 15) -> subprocess.Popen:
    p = ns.popen(sys.executable, "-c", GONE, server, name, addr, str(limit), stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True)
    assert "ready" in p.stdout.readline()
    return p

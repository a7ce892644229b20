"""Service virtual IPs with real packets, in a namespace that plays the host: 3 labelled
backend sandboxes, each a TCP (80) and UDP (53) server answering its own name, and client
sandboxes reaching them through the VIP (`muslin service create`)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from dnsutil import answers, wait_answers
from nsutil import Muslind, random_subnet24, sh, suffix, tool

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]

# A backend: TCP on 80 and UDP on 53 (and 8080 for a second service port), answering its name.
SERVER = r"""
import socket, sys, threading
name = sys.argv[1].encode()  # (dual stack: IPv4 clients come as ::ffff:a.b.c.d)
def tcp(port):
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(512)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(name)
        finally:
            c.close()
def udp():
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); u.bind(("::", 53))
    while True:
        _, a = u.recvfrom(512); u.sendto(name, a)
for p in (80, 8080):
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# A client: N new TCP connections to VIP:PORT, each reading the name; JSON {name: count, errors: [...]}.
CLIENT = r"""
import json, os, socket, sys, time
vip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0
stop = sys.argv[5] if len(sys.argv) > 5 else ""  # n = 0: until this file exists
got, errors = {}, []
t0 = time.monotonic()
i = -1
while True:
    i += 1
    if (n and i >= n) or (stop and i % 10 == 0 and os.path.exists(stop)):
        break
    if rate:
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET)
    s.settimeout(10)
    try:
        s.connect((vip, port))
        data = b""
        while True:
            chunk = s.recv(64)
            if not chunk:
                break
            data += chunk
        got[data.decode()] = got.get(data.decode(), 0) + 1
    except OSError as e:
        errors.append(type(e).__name__ + ": " + str(e))
    finally:
        s.close()
print(json.dumps({"got": got, "errors": errors}))
"""

# One connected UDP socket (one conntrack entry) asking VIP:53 every 0.1 s until stdin says
# stop; prints each answer (or "timeout") with a monotonic time.
UDP_CLIENT = r"""
import select, socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect((sys.argv[1], 53)); u.settimeout(1)
while not select.select([sys.stdin], [], [], 0)[0]:
    try:
        u.send(b"q"); print(time.monotonic(), u.recv(512).decode(), flush=True)
    except socket.timeout:
        print(time.monotonic(), "timeout", flush=True)
    except OSError as e:
        print(time.monotonic(), "error", type(e).__name__, flush=True)
    time.sleep(0.1)
"""

# Connect once and say how it ended: "ok NAME", "refused", "timeout", or another error.
PROBE = r"""
import socket, sys
vip, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET,
                  socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(10)
try:
    s.connect((vip, port))
    if proto == "udp":
        s.send(b"q")
    print("ok", s.recv(64).decode())
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
except OSError as e:
    print("error", type(e).__name__, e)
"""


class World:
    def __init__(self, netns, tmp: Path, *network: str) -> None:
        self.host = netns("host")
        self.state = tmp / "state"
        self.tmp = tmp
        self.tag = suffix()
        self.sandboxes: list[str] = []
        self.servers: list[subprocess.Popen] = []
        self.daemons: list[Muslind] = []
        self.net = f"s{self.tag}"
        self.subnet = ipaddress.ip_network(random_subnet24())
        self.gateway = str(self.subnet.network_address + 1)
        self.muslin("network", "create", self.net, "--subnet", str(self.subnet), *network)

    def muslin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(tool("muslin"), "--host-netns", self.host.name, "--state-dir", str(self.state), *args, check=check)

    def sandbox(self, role: str, *connect: str) -> str:
        name = f"mt-{role}-{self.tag}"
        self.muslin("sandbox", "create", name)
        self.sandboxes.append(name)
        self.muslin("connect", self.net, name, *connect)
        return name

    def backend(self, role: str, app: str = "web") -> str:
        name = self.sandbox(role, "--label", f"app={app}")
        p = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", SERVER, name],
                             stdout=subprocess.PIPE, text=True)
        self.servers.append(p)
        assert p.stdout.readline().strip() == "ready"
        return name

    def service(self, name: str, *args: str) -> dict:
        return json.loads(self.muslin("service", "create", name, "--network", self.net, *args, "-o", "json").stdout)

    def inspect(self, name: str) -> dict:
        return json.loads(self.muslin("service", "inspect", name, "-o", "json").stdout)

    def run(self, sb: str, code: str, *args: str, timeout: float = 300) -> str:
        return sh("ip", "netns", "exec", sb, sys.executable, "-c", code, *args, timeout=timeout).stdout

    def connections(self, sb: str, vip: str, n: int, port: int = 80, rate: float = 0) -> tuple[Counter, list[str]]:
        out = json.loads(self.run(sb, CLIENT, vip, str(port), str(n), str(rate)))
        return Counter(out["got"]), out["errors"]

    def probe(self, sb: str, vip: str, port: int = 80, proto: str = "tcp") -> str:
        return self.run(sb, PROBE, vip, str(port), proto).strip()

    def nft(self) -> str:
        return sh("ip", "netns", "exec", self.host.name, "nft", "list", "table", "inet", "muslin").stdout

    def cleanup(self) -> None:
        for p in self.servers:
            p.terminate()
            p.wait(10)
        for d in self.daemons:
            d.stop()
        for s in json.loads(self.muslin("service", "ls", "-o", "json", check=False).stdout or "[]"):
            self.muslin("service", "rm", s["name"], check=False)
        for sb in self.sandboxes:
            self.muslin("sandbox", "rm", sb, check=False)
            sh("ip", "netns", "del", sb, check=False)
        self.muslin("network", "rm", "--force", self.net, check=False)


@pytest.fixture
def w(netns, tmp_path):
    world = World(netns, tmp_path)
    try:
        yield world
    finally:
        world.cleanup()


def three(w: World) -> tuple[list[str], str]:
    return [w.backend(f"b{i}") for i in range(3)], w.sandbox("client")


def test_3000_connections_spread_evenly_hairpin_and_dns(w):
    bs, client = three(w)
    svc = w.service("web", "--port", "80/tcp", "--port", "53/udp", "--selector", "app=web")
    vip = svc["vip"]
    rng = json.loads(w.muslin("network", "inspect", w.net, "-o", "json").stdout)["service_range"]
    assert ipaddress.ip_address(vip) in ipaddress.ip_network(rng)
    assert svc["endpoints"] == 3
    got, errors = w.connections(client, vip, 3000)
    assert errors == []
    assert set(got) == set(bs)
    for b in bs:
        assert 0.28 <= got[b] / 3000 <= 0.38, got
    # hairpin: a backend reaches the VIP and so, now and then, itself
    got, errors = w.connections(bs[0], vip, 60)
    assert errors == [] and got[bs[0]] > 0, got
    # UDP through the VIP
    assert w.probe(client, vip, 53, "udp").split()[0] == "ok"
    # the service's name resolves to its VIP in muslind's DNS, and stops with the service
    resolv = w.tmp / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\n")
    marker = w.state / "dns.pid"
    w.daemons.append(Muslind(w.host, w.state, "--resolv-conf", str(resolv)))
    end = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < end:
        time.sleep(0.05)

    class Sb:
        name = client

        def run(self, *cmd: str, check: bool = False, timeout: float = 60, **kw):
            return sh("ip", "netns", "exec", client, *cmd, check=check, timeout=timeout)

    got_dns, _ = wait_answers(Sb(), w.gateway, "web", [vip], timeout=15)
    assert got_dns == [vip]
    assert answers(Sb(), w.gateway, f"web.{w.net}") == [vip]
    w.muslin("service", "rm", "web")
    got_dns, _ = wait_answers(Sb(), w.gateway, "web", [], timeout=15)
    assert got_dns == []
    assert "svc/" not in w.nft().replace("svc/synced", "")


def test_no_endpoints_is_refused_at_once(w):
    client = w.sandbox("client")
    svc = w.service("none", "--port", "80/tcp", "--port", "53/udp", "--selector", "app=nothing")
    assert svc["endpoints"] == 0
    assert w.probe(client, svc["vip"], 80, "tcp") == "refused"  # a TCP reset, not a timeout
    assert w.probe(client, svc["vip"], 53, "udp") == "refused"  # ICMP port unreachable
    assert w.probe(client, svc["vip"], 81, "tcp") == "refused"  # a port the service does not have
    # the first backend makes it answer
    b = w.backend("b0", app="nothing")
    assert w.inspect("none")["endpoints"] == 1
    assert w.probe(client, svc["vip"], 80, "tcp") == f"ok {b}"


def test_relabelled_and_detached_backends_leave_the_service(w):
    bs, client = three(w)
    vip = w.service("web", "--port", "80/tcp", "--selector", "app=web")["vip"]
    w.muslin("label", bs[2], "app=old")
    assert w.inspect("web")["endpoints"] == 2
    w.muslin("disconnect", w.net, bs[1])
    assert [b["endpoint"] for b in w.inspect("web")["backends"]] == [f"{bs[0]}/eth0"]
    got, errors = w.connections(client, vip, 100)
    assert errors == [] and got == Counter({bs[0]: 100})
    w.muslin("label", bs[2], "app=web")  # relabelled back: it joins again
    got, errors = w.connections(client, vip, 200)
    assert errors == [] and set(got) == {bs[0], bs[2]}, got


def test_a_udp_client_keeps_getting_answers_after_its_backend_is_removed(w):
    bs, client = three(w)
    vip = w.service("dns", "--port", "53/udp", "--selector", "app=web")["vip"]
    p = subprocess.Popen(["ip", "netns", "exec", client, sys.executable, "-c", UDP_CLIENT, vip],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline().split()
        assert len(first) == 2 and first[1] in bs, first
        mine = first[1]
        w.muslin("disconnect", w.net, mine)
        t_removed = time.monotonic()
        lines = []
        while len(lines) < 40:
            lines.append(p.stdout.readline().split())
    finally:
        p.stdin.write("stop\n")
        p.stdin.close()
        p.wait(15)
    after = [ln for ln in lines if float(ln[0]) > t_removed + 1.5]  # what it sent once the change was made
    assert after and all(ln[1] in bs and ln[1] != mine for ln in after), lines


def test_affinity_keeps_a_client_on_one_backend(w):
    bs, client = three(w)
    vip = w.service("sticky", "--port", "80/tcp", "--selector", "app=web", "--affinity", "60")["vip"]
    got, errors = w.connections(client, vip, 60)
    assert errors == [] and len(got) == 1, got
    other = w.sandbox("client2")
    got2, errors = w.connections(other, vip, 30)
    assert errors == [] and len(got2) == 1, got2


def test_a_rolling_replacement_of_every_backend_fails_no_connection(w):
    bs, client = three(w)
    vip = w.service("web", "--port", "80/tcp", "--selector", "app=web")["vip"]
    stop = w.tmp / "stop"
    p = subprocess.Popen(["ip", "netns", "exec", client, sys.executable, "-c", CLIENT, vip, "80", "0", "200",
                          str(stop)], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    new = []
    for i, old in enumerate(bs):
        new.append(w.backend(f"n{i}", app="starting"))  # the new one listens,
        w.muslin("label", new[-1], "app=web")  # joins,
        w.muslin("label", old, "app=retired")  # the old one leaves the service...
        time.sleep(0.5)  # (connections it accepted end by themselves: each is one short exchange)
        w.muslin("disconnect", w.net, old)  # ...then goes
    time.sleep(1)
    stop.write_text("")
    out = json.loads(p.communicate(timeout=300)[0])
    assert out["errors"] == [], out["errors"][:5]
    assert set(out["got"]) >= set(new), out["got"]
    print("connections during the replacement:", sum(out["got"].values()))
    assert {b["endpoint"].split("/")[0] for b in w.inspect("web")["backends"]} == set(new)


def test_bad_input_is_one_line_and_changes_nothing(w):
    w.backend("b0")
    w.service("web", "--port", "80/tcp", "--selector", "app=web")
    before = (w.nft(), w.muslin("service", "ls", "-o", "json").stdout)
    rng = ipaddress.ip_network(json.loads(w.muslin("network", "inspect", w.net, "-o", "json").stdout)["service_range"])
    cases = [
        ("api", "--port", "80/tcp", "--selector", "app=web", "--vip", "192.0.2.10"),  # outside the range
        ("api", "--port", "80/tcp", "--selector", "app=web", "--vip", str(rng.broadcast_address)),
        ("web", "--port", "80/tcp", "--selector", "app=web"),  # the name is taken
        ("api", "--port", "80/icmp", "--selector", "app=web"),
        ("api", "--port", "0/tcp", "--selector", "app=web"),
        ("api", "--port", "http", "--selector", "app=web"),
        ("api", "--port", "80/tcp", "--selector", "app"),
    ]
    for args in cases:
        r = w.muslin("service", "create", args[0], "--network", w.net, *args[1:], check=False)
        assert r.returncode != 0, args
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, (args, r.stderr)
    r = w.muslin("service", "create", "api", "--network", "nope", "--port", "80/tcp", "--selector", "a=b", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr
    assert (w.nft(), w.muslin("service", "ls", "-o", "json").stdout) == before


def test_network_repair_puts_the_services_back_after_the_table_was_deleted(w):
    bs, client = three(w)
    vip = w.service("web", "--port", "80/tcp", "--selector", "app=web")["vip"]
    sh("ip", "netns", "exec", w.host.name, "nft", "delete", "table", "inet", "muslin")
    w.muslin("network", "repair")
    got, errors = w.connections(client, vip, 150)
    assert errors == [] and set(got) == set(bs), got


def test_a_target_port_and_the_cli_listing(w):
    b = w.backend("b0")
    client = w.sandbox("client")
    svc = w.service("alt", "--port", "9000:8080/tcp", "--selector", "app=web")
    assert svc["ports"] == ["9000:8080/tcp"]
    assert w.probe(client, svc["vip"], 9000) == f"ok {b}"
    assert w.probe(client, svc["vip"], 8080) == "refused"  # only the service's port is on the VIP
    assert w.muslin("service", "ls", "-q").stdout.split() == ["alt"]
    listed = json.loads(w.muslin("service", "ls", "-o", "json").stdout)
    assert [(s["name"], s["vip"], s["endpoints"]) for s in listed] == [("alt", svc["vip"], 1)]
    r = w.muslin("service", "rm", "nope", check=False)
    assert r.returncode != 0 and r.stderr.strip() == "error: nope: service 'nope' does not exist"
    r = w.muslin("service", "inspect", "nope", check=False)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1


def test_an_ipv6_service(netns, tmp_path):
    h = random_subnet24().split(".")
    w = World(netns, tmp_path, "--subnet", f"fd{int(h[1]):02x}:{int(h[2]):x}::/64",
              "--service-range", f"fd{int(h[1]):02x}:96:{int(h[2]):x}::/112")
    try:
        bs, client = three(w)
        svc = w.service("web6", "--port", "80/tcp", "--port", "53/udp", "--selector", "app=web")
        assert ipaddress.ip_address(svc["vip"]).version == 6 and svc["endpoints"] == 3
        got, errors = w.connections(client, svc["vip"], 300)
        assert errors == [] and set(got) == set(bs), (got, errors[:3])
        got, errors = w.connections(bs[0], svc["vip"], 40)  # hairpin
        assert errors == [] and got[bs[0]] > 0, got
        assert w.probe(client, svc["vip"], 53, "udp").split()[0] == "ok"
        empty = w.service("none6", "--port", "80/tcp", "--selector", "app=nothing")
        assert w.probe(client, empty["vip"], 80) == "refused"
    finally:
        w.cleanup()

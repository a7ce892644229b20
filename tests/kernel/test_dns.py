"""muslind's DNS on the real kernel: sandboxes made with the `muslin` CLI in a namespace that
plays the host, muslind serving DNS there on each bridge network's gateway, real queries
from inside the sandboxes (busybox nslookup, ping NAME, wget http://NAME/, dnspython), an
upstream that is a fake server this test starts in the host namespace (never a real one)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from dnsutil import LOOP, Upstream, answers, query, wait_answers, watch_gone
from nsutil import Muslind, random_subnet24, sh, suffix, tool

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]


class World:
    def __init__(self, netns, tmp: Path) -> None:
        self.host = netns("host")
        self.tmp = tmp
        self.state = tmp / "state"
        self.tag = suffix()
        self.sandboxes: list[str] = []
        self.daemons: list[Muslind] = []
        self.resolv = tmp / "resolv.conf"
        self.resolv.write_text("nameserver 127.0.0.53\n")
        self.upstream = Upstream(self.host, "127.0.0.53", tmp / "upstream.log", "upstream.test=192.0.2.7")

    def muslin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(tool("muslin"), "--host-netns", self.host.name, "--state-dir", str(self.state), *args, check=check)

    def network(self, role: str, *extra: str) -> tuple[str, ipaddress.IPv4Network]:
        name = f"{role}{self.tag}"
        sub = ipaddress.ip_network(random_subnet24())
        self.muslin("network", "create", name, "--subnet", str(sub), *extra)
        return name, sub

    def sandbox(self, role: str) -> str:
        name = f"mt-{role}-{self.tag}"
        self.muslin("sandbox", "create", name)
        self.sandboxes.append(name)
        return name

    def connect(self, net: str, sb: str, *extra: str) -> str:
        ep = json.loads(self.muslin("connect", net, sb, "-o", "json", *extra).stdout)
        return ep["addresses"][0].split("/")[0]

    def many(self, net: str, roles: list[str], *aliases: str) -> list[str]:
        """Sandboxes connected to `net` with `aliases`, made in one process (faster than the CLI
        twice per sandbox); returns the names."""
        names = [f"mt-{r}-{self.tag}" for r in roles]
        self.sandboxes += names
        code = ("import sys\nfrom muslin.control.hostns import enter\nenter(sys.argv[1])\n"
                "from muslin.control import sandboxes\nfrom muslin.control.service import Muslin\n"
                "m = Muslin(state_dir=sys.argv[2])\n"
                "for n in sys.argv[5:]:\n"
                "    sandboxes.create(m, n)\n"
                "    sandboxes.connect(m, sys.argv[3], n, aliases=tuple(a for a in sys.argv[4].split(',') if a))\n")
        sh(sys.executable, "-c", code, self.host.name, str(self.state), net, ",".join(aliases), *names, timeout=300)
        return names

    def muslind(self, *extra: str) -> Muslind:
        marker = self.state / "dns.pid"
        marker.unlink(missing_ok=True)
        d = Muslind(self.host, self.state, "--resolv-conf", str(self.resolv), *extra)
        self.daemons.append(d)
        end = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < end and d.proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), d.log_path.read_text()
        return d

    def sb(self, name: str):
        class Sb:
            def __init__(s, n: str) -> None:
                s.name = n

            def run(s, *cmd: str, check: bool = False, timeout: float = 60, **kw):
                return sh("ip", "netns", "exec", s.name, *cmd, check=check, timeout=timeout)

            def popen(s, *cmd: str, **kw):
                return subprocess.Popen(["ip", "netns", "exec", s.name, *cmd], **kw)
        return Sb(name)

    def cleanup(self) -> None:
        for d in self.daemons:
            d.stop()
        self.upstream.stop()
        for sb in self.sandboxes:
            self.muslin("sandbox", "rm", sb, check=False)
            sh("ip", "netns", "del", sb, check=False)
        for n in json.loads(self.muslin("network", "ls", "-o", "json", check=False).stdout or "[]"):
            self.muslin("network", "rm", "--force", n["name"], check=False)


@pytest.fixture
def w(netns, tmp_path):
    world = World(netns, tmp_path)
    try:
        yield world
    finally:
        world.cleanup()


def nslookup(w: World, sb: str, name: str) -> str:
    return w.sb(sb).run("busybox", "nslookup", name, timeout=30).stdout


def test_names_on_one_network_not_across_networks_and_upstream_forwarding(w):
    web, sub = w.network("web")
    other, _ = w.network("oth")
    srv, cli, far = w.sandbox("srv"), w.sandbox("cli"), w.sandbox("far")
    a_srv = w.connect(web, srv, "--alias", "api", "--label", "app=web")
    w.connect(web, cli)
    w.connect(other, far)
    w.muslind("--dns-handover", "0")
    gw = str(sub[1])
    # labels: set at connect, changed at once on every network with `muslin label`
    assert w.muslin("label", srv, "tier=db", "app-").stdout.strip() == "tier=db"
    (rec,) = [e for e in json.loads(w.muslin("network", "inspect", web, "-o", "json").stdout)["endpoints"]
              if e["name"] == srv]
    assert rec["labels"] == {"tier": "db"} and rec["aliases"] == ["api"] and rec["namespace"] == "default"
    assert w.muslin("label", srv, "bad key=x", check=False).returncode == 2
    # the sandbox's resolv.conf names its network's DNS (muslind on the gateway)
    rc = Path(f"/etc/netns/{cli}/resolv.conf").read_text()
    assert f"nameserver {gw}" in rc and f"search {web}" in rc
    # busybox nslookup (through resolv.conf), names, aliases, name.network, any case
    for name in (srv, "api", f"api.{web}", "API", f"{srv.upper()}.{web.upper()}"):
        out = nslookup(w, cli, name)
        assert a_srv in out, (name, out)
    # ping NAME and wget http://NAME/ (busybox httpd in the server sandbox; no `wget -T`: this
    # busybox build crashes on it)
    www = w.tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("hello by name\n")
    httpd = w.sb(srv).popen("busybox", "httpd", "-f", "-p", "80", "-h", str(www))
    try:
        assert w.sb(cli).run("ping", "-c", "1", "-W", "2", "api").returncode == 0
        got = ""
        for _ in range(50):
            r = w.sb(cli).run("busybox", "wget", "-q", "-O", "-", "http://api/", timeout=20)
            got = r.stdout
            if "hello by name" in got:
                break
            time.sleep(0.1)
        assert "hello by name" in got
    finally:
        httpd.kill()
        httpd.wait()
    # a name on web is not visible from other (forwarded upstream, which says NXDOMAIN)
    r = query(w.sb(far), gw_of(w, other), srv)
    assert r["rcode"] == "NXDOMAIN" and not r["answers"], r
    assert a_srv not in nslookup(w, far, "api")
    # PTR of an endpoint address; an upstream name is forwarded to the upstream server
    ptr = query(w.sb(cli), gw, ipaddress.ip_address(a_srv).reverse_pointer, "PTR")
    assert ptr["answers"] == [f"{srv}.{web}."], ptr
    up = query(w.sb(cli), gw, "upstream.test")
    assert up["answers"] == ["192.0.2.7"] and "upstream.test A" in w.upstream.questions()
    # TTL at most 5 s
    assert all(t <= 5 for t in query(w.sb(cli), gw, "api")["ttl"])
    # the sandbox's resolv.conf goes with it
    w.muslin("sandbox", "rm", cli)
    assert not Path(f"/etc/netns/{cli}").exists()


def gw_of(w: World, net: str) -> str:
    r = json.loads(w.muslin("network", "inspect", net, "-o", "json").stdout)["range_sets"][0][0]
    return r.get("gateway") or str(next(ipaddress.ip_network(r["subnet"]).hosts()))


def test_shared_alias_every_order_aaaa_nodata_and_detach(w):
    web, sub = w.network("web")
    gw = str(sub[1])
    members = [w.sandbox(f"m{i}") for i in range(3)]
    addrs = [w.connect(web, m, "--alias", "shared") for m in members]
    asker = w.sandbox("ask")
    w.connect(web, asker)
    w.muslind("--dns-handover", "0")
    script = ("import dns.message, dns.query, json, sys\n"
              "out = []\n"
              "for _ in range(100):\n"
              "    r = dns.query.udp(dns.message.make_query('shared', 'A'), sys.argv[1], timeout=5)\n"
              "    out.append([str(x) for rr in r.answer for x in rr])\n"
              "print(json.dumps(out))\n")
    got = json.loads(w.sb(asker).run(sys.executable, "-c", script, gw, check=True).stdout)
    orders = Counter(tuple(a) for a in got)
    assert all(sorted(o) == sorted(addrs) for o in orders), orders
    assert len(orders) == 6, orders  # every order of three, over 100 answers
    # an IPv4-only name asked for AAAA: NOERROR and no records
    r6 = query(w.sb(asker), gw, "shared", "AAAA")
    assert r6["rcode"] == "NOERROR" and r6["answers"] == [], r6
    # a detached endpoint stops resolving: measured from the moment `disconnect` returns
    p = watch_gone(w.sb(asker), gw, "shared", addrs[0])
    w.muslin("disconnect", web, members[0])
    t_done = time.time()
    out = json.loads(p.communicate(timeout=30)[0].strip().splitlines()[-1])
    assert out["t"] is not None and sorted(out["answers"]) == sorted(addrs[1:]), out
    print(f"detach -> gone from DNS: {max(0.0, out['t'] - t_done) * 1000:.0f} ms")
    # and an attach appears
    new = w.sandbox("m3")
    a_new = w.connect(web, new, "--alias", "shared")
    got, took = wait_answers(w.sb(asker), gw, "shared", sorted(addrs[1:] + [a_new]))
    assert got == sorted(addrs[1:] + [a_new])


def test_dead_first_upstream_internal_networks_and_truncation(w, netns):
    dead = Upstream(w.host, "127.0.0.54", w.tmp / "dead.log", silent=True)
    try:
        w.resolv.write_text("nameserver 127.0.0.54\nnameserver 127.0.0.53\n")
        web, sub = w.network("web", "--subnet", f"fd00:{os.getpid() % 65536:x}:{w.tag[:4]}::/64")
        intern, isub = w.network("int", "--internal")
        gw, igw = str(sub[1]), str(isub[1])
        many = w.many(web, [f"n{i}" for i in range(20)], "many")
        inside = w.sandbox("in")
        w.connect(intern, inside, "--alias", "lonely")
        w.muslind("--dns-handover", "0")
        asker = w.sb(many[0])
        # the first server is dead (reads, never answers): the second answers within 2 s
        r = query(asker, gw, "upstream.test")
        assert r["answers"] == ["192.0.2.7"], r
        print(f"first upstream dead: answered in {r['ms']:.0f} ms")
        assert "upstream.test A" in w.upstream.questions() and "upstream.test A" in dead.questions()
        # SERVFAIL from an upstream: the next one is asked (the dead one, then nothing): SERVFAIL
        # an internal network forwards nothing: its own names answer, others SERVFAIL
        r = query(w.sb(inside), igw, "lonely")
        assert r["answers"] and r["rcode"] == "NOERROR"
        before = len(w.upstream.questions())
        r = query(w.sb(inside), igw, "upstream.test")
        assert r["rcode"] == "SERVFAIL" and len(w.upstream.questions()) == before
        # over 512 bytes (20 AAAA records): TC on UDP, everything on TCP (local names and forwarded ones)
        udp = query(asker, gw, "many", "AAAA")
        tcp = query(asker, gw, "many", "AAAA", proto="tcp")
        assert udp["tc"] and len(udp["answers"]) < 20 and not tcp["tc"] and len(tcp["answers"]) == 20, (udp, tcp)
        assert len(query(asker, gw, "many")["answers"]) == 20  # 20 A records fit in 512 bytes
        big_udp = query(asker, gw, "big.test", "TXT")
        big_tcp = query(asker, gw, "big.test", "TXT", proto="tcp")
        assert big_udp["tc"] and not big_udp["answers"] and len(big_tcp["answers"]) == 10
    finally:
        dead.stop()


def test_networks_come_and_go_and_a_restart_loses_no_query(w):
    w.muslind("--dns-handover", "0")
    web, sub = w.network("web")  # made after muslind started: it binds its gateway
    gw = str(sub[1])
    srv, cli = w.sandbox("srv"), w.sandbox("cli")
    a_srv = w.connect(web, srv)
    w.connect(web, cli)
    got, _ = wait_answers(w.sb(cli), gw, srv, [a_srv])
    assert got == [a_srv]
    gone, gsub = w.network("gone")
    listening = lambda: sh("ip", "netns", "exec", w.host.name, "ss", "-lnu").stdout  # noqa: E731
    end = time.monotonic() + 10
    while f"{gsub[1]}:53" not in listening() and time.monotonic() < end:
        time.sleep(0.1)
    assert f"{gsub[1]}:53" in listening()
    w.muslin("network", "rm", gone)
    end = time.monotonic() + 10
    while f"{gsub[1]}:53" in listening() and time.monotonic() < end:
        time.sleep(0.1)
    assert f"{gsub[1]}:53" not in listening()
    # restart under a query loop: 10 queries/s for 12 s, each waiting up to 5 s, no retry
    w.daemons[-1].stop()
    d1 = w.muslind("--dns-handover", "60")
    loop = w.sb(cli).popen(sys.executable, "-c", LOOP, gw, srv, "120", "0.1", "5", stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    assert "started" in loop.stdout.readline()
    time.sleep(2)
    d1.stop()  # SIGTERM: the sockets go to a holder...
    d2 = w.muslind("--dns-handover", "0")  # ...and the next muslind takes them over
    out, err = loop.communicate(timeout=120)
    got = json.loads(out.strip().splitlines()[-1])
    results = got["answers"]
    lost = [i for i, r in enumerate(results) if r != [a_srv]]
    assert not lost, f"{len(lost)} of {len(results)} queries lost or wrong: {lost[:10]}; ms {[round(m) for m in got['ms']][15:30]}"
    print(f"restart under a query loop: {len(results)} answered, none lost, slowest {max(got['ms']):.0f} ms "
          "(queued in the handed-over socket while muslind restarted)")
    assert d2.proc.poll() is None

"""DNS across the hosts of a cluster network (`muslin lab`: real etcd, one muslind per host):
each host publishes its endpoints under cluster/<net>/endpoints/<host>/ and every host's
muslind answers for all of them; real queries and traffic by name between sandboxes on
different hosts."""

from __future__ import annotations

import subprocess
import time

import pytest
from dnsutil import answers, query
from labutil import lab_cli, lab_up

from muslin.lab import core

pytestmark = [pytest.mark.kernel, pytest.mark.client, pytest.mark.timeout(600)]


class Ns:
    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *cmd: str, check: bool = False, timeout: float = 60):
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True,
                              timeout=timeout, check=check)


@pytest.fixture
def lab(tmp_path):
    with lab_up(tmp_path, "d", "--hosts", "2", "--backend", "vxlan", "--lease-ttl", "4", "--resync", "2") as name:
        yield name


def sandbox(lab: str, host: str, sb: str, *aliases: str) -> tuple[Ns, str]:
    r = lab_cli("sandbox", lab, host, sb, *[x for a in aliases for x in ("--alias", a)])
    assert r.returncode == 0, r.stderr
    st = core.LabState.load(lab)
    return Ns(st.sandboxes[sb]["netns"]), r.stdout.strip().split("/")[0]


def gateway(addr: str) -> str:
    import ipaddress
    return str(next(ipaddress.ip_interface(addr + "/24").network.hosts()))


def test_names_resolve_across_two_lab_hosts(lab, tmp_path):
    a, a_ip = sandbox(lab, "h1", "a", "front")
    b, b_ip = sandbox(lab, "h2", "b", "back")
    c, c_ip = sandbox(lab, "h2", "c")
    gw_a, gw_c = gateway(a_ip), gateway(c_ip)
    # a's host learns b from etcd (b's host publishes it): wait until it answers
    end = time.monotonic() + 30
    while answers(a, gw_a, "back") != [b_ip] and time.monotonic() < end:
        time.sleep(0.2)
    assert answers(a, gw_a, "back") == [b_ip]
    # busybox nslookup through the sandbox's resolv.conf, names and aliases, both ways
    assert b_ip in a.run("busybox", "nslookup", "b").stdout
    assert a_ip in c.run("busybox", "nslookup", "front").stdout
    assert answers(c, gw_c, "A") == [a_ip]  # case-insensitive
    # ping NAME and wget http://NAME/ across hosts
    assert a.run("ping", "-c", "1", "-W", "2", "back").returncode == 0
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("across hosts\n")
    httpd = subprocess.Popen(["ip", "netns", "exec", b.name, "busybox", "httpd", "-f", "-p", "80", "-h", str(www)])
    try:
        got = ""
        for _ in range(50):
            got = a.run("busybox", "wget", "-q", "-O", "-", "http://back/", timeout=20).stdout
            if "across hosts" in got:
                break
            time.sleep(0.1)
        assert "across hosts" in got
    finally:
        httpd.kill()
        httpd.wait()
    # PTR of a remote endpoint
    import ipaddress
    ptr = query(a, gw_a, ipaddress.ip_address(b_ip).reverse_pointer, "PTR")
    assert ptr["answers"] == [f"b.{core.LabState.load(lab).network}."], ptr
    # b goes: its host removes its record, and a's host stops answering for it
    core.remove_sandbox(lab, "b")
    end = time.monotonic() + 30
    while answers(a, gw_a, "back") and time.monotonic() < end:
        time.sleep(0.2)
    assert answers(a, gw_a, "back") == []
    assert answers(a, gw_a, "c") == [c_ip]

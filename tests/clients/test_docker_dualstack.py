"""Docker on a dual-stack cluster network: a 3-host vxlan lab with an IPv4 and an IPv6
cluster CIDR, a private dockerd on h1 and h2 (tests/clients/multihost_util.py). Its own
module: the module-scoped labs of test_docker_multihost.py hold the root namespace's lock
until that module ends."""

from __future__ import annotations

import ipaddress
import json

import pytest

from docker_util import IMAGE, wait_for
from multihost_util import CIDR, ULIMIT, create, docker_lab, sb_ping
from muslin.lab import core

pytestmark = [pytest.mark.client, pytest.mark.kernel, pytest.mark.timeout(900)]

CIDR6 = "fd00:10::/48"


@pytest.fixture(scope="module")
def mh6(tmp_path_factory):
    with docker_lab("vxlan", tmp_path_factory.mktemp("dkmh6"), cidr6=CIDR6) as got:
        yield got


def test_docker_on_a_dual_stack_cluster_network(mh6):
    """Docker's pools are both cluster CIDRs (`--ipv6 --subnet CIDR --subnet CIDR6`); each
    container has an address of each family from its host's leases, and the containers on
    h1 and h2 and a sandbox on h3 reach each other over IPv4 and IPv6, HTTP over IPv6 too."""
    name, eng, _ = mh6
    st = core.LabState.load(name)
    r = create(eng["h1"], "--subnet", CIDR, check=False)
    assert r.returncode != 0 and f"pass --subnet {CIDR} --subnet {CIDR6} with --ipv6" in r.stderr, r.stderr
    six: dict[str, str] = {}
    for h, e in eng.items():
        create(e, "--ipv6", "--subnet", CIDR, "--subnet", CIDR6)
        e.docker("run", "-d", "--name", f"web-{h}", "--network", "net0", *ULIMIT, IMAGE, "httpd", "-f", "-p", "80",
                 "-h", "/www")
        nets = json.loads(e.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", f"web-{h}").stdout)
        six[h] = nets["net0"]["GlobalIPv6Address"]
        s = core.host_status(st, h)
        assert ipaddress.ip_address(six[h]) in ipaddress.ip_network(s["subnet6"]), (h, six[h], s)
        assert ipaddress.ip_address(e.ip(f"web-{h}")) in ipaddress.ip_network(s["subnet"])
    h1, h2 = eng["h1"], eng["h2"]
    assert wait_for(lambda: h1.ping("web-h1", six["h2"]), 30, "h1 -> h2 ping6")
    assert h2.ping("web-h2", six["h1"]) and h1.ping("web-h1", h2.ip("web-h2"))
    assert h1.fetch("web-h1", f"[{six['h2']}]") == "hello from muslin\n"
    sb = core.sandbox(name, "h3", "c")
    assert wait_for(lambda: sb_ping(sb["netns"], six["h1"]) and sb_ping(sb["netns"], six["h2"]), 30,
                    "h3 sandbox -> containers over IPv6")
    assert h2.ping("web-h2", sb["address6"].split("/")[0])

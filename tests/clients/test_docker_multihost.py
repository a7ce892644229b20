"""Docker containers on two hosts sharing one Muslin cluster network (issue 15, items 1-2).

A 3-host lab (vxlan, host-gw, bgp). In the namespaces of h1 and h2 a private dockerd runs (own
--data-root, --exec-root, --pidfile, -H socket and cgroup parent, `--bridge=none
--iptables=false --ip6tables=false`), each finding its own host's muslind through its
own plugin name `muslin-<lab>-<host>` (a socket in /run/docker/plugins/). Containers on
h1 and h2 ping and fetch HTTP from each other, a CNI sandbox on h3 reaches both, a dockerd
restart on h2 changes nothing on h1, and `docker network rm` on h1 leaves h2's containers
working, and a port published on h1 answers on h1's underlay address from h2 and h3.
tests/clients/multihost_util.py says how dockerd runs in a lab host.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from docker_util import IMAGE, wait_for
from multihost_util import CIDR, ULIMIT, create, docker_lab, lease, ns_kernel, run, sb_fetch, sb_ping
from nsutil import suffix
from muslin.lab import core

pytestmark = [pytest.mark.client, pytest.mark.kernel, pytest.mark.timeout(900)]


@pytest.fixture(scope="module", params=["vxlan", "host-gw", "bgp", "wireguard"])
def mh(request, tmp_path_factory):
    with docker_lab(request.param, tmp_path_factory.mktemp("dkmh")) as got:
        yield got


def test_docker_network_on_a_cluster_network_pool_is_the_cidr_addresses_the_lease(mh):
    name, eng, _ = mh
    h1, h2 = eng["h1"], eng["h2"]
    # No --subnet: Docker asks the IPAM for a pool before the driver sees -o muslin.network.
    r = create(h1, check=False)
    assert r.returncode != 0
    msg = r.stderr.strip().splitlines()[-1]
    assert (f"is this host's side of cluster network 'net0' (CIDR {CIDR})" in msg
            and f"pass --subnet {CIDR}" in msg and f"its lease {lease(name, 'h1')}" in msg), msg
    r = create(h1, "--subnet", lease(name, "h1"), check=False)  # the lease is not Docker's pool either
    assert r.returncode != 0 and f"the CIDR of cluster network 'net0' (give exactly {CIDR}" in r.stderr, r.stderr
    r = create(h1, "--internal", "--subnet", CIDR, check=False)  # the side's own setting: not dropped silently
    assert r.returncode != 0 and "--internal cannot be set when joining the existing Muslin network" in r.stderr
    assert "net0" not in h1.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    create(h1, "--subnet", CIDR)
    create(h2, "--subnet", CIDR)
    for h, e in eng.items():
        ipam = json.loads(e.docker("network", "inspect", "-f", "{{json .IPAM.Config}}", "net0").stdout)
        lease_net = lease(name, h)
        assert ipam == [{"Subnet": CIDR}], (h, ipam)  # what Docker shows on every host
        e.docker("run", "-d", "--name", f"web-{h}", "--network", "net0", *ULIMIT, *(
            ("--restart", "always") if h == "h2" else ()), IMAGE, "httpd", "-f", "-p", "80", "-h", "/www")
        ip = e.ip(f"web-{h}")
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(lease_net), (h, ip, lease_net)
        inside = e.exec(f"web-{h}", "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert f"{ip}/24" in inside, inside  # on-link is the host's lease; the rest of the CIDR via the gateway
        route = e.exec(f"web-{h}", "ip", "route").stdout
        assert f"default via {lease_net.replace('.0/24', '.1')}" in route, route


def test_containers_on_two_hosts_ping_and_fetch_http(mh):
    _, eng, _ = mh
    h1, h2 = eng["h1"], eng["h2"]
    a, b = h1.ip("web-h1"), h2.ip("web-h2")
    assert wait_for(lambda: h1.ping("web-h1", b), 30, "h1 -> h2 ping")
    assert h2.ping("web-h2", a)
    assert h1.fetch("web-h1", b) == "hello from muslin\n"
    assert h2.fetch("web-h2", a) == "hello from muslin\n"


def test_container_names_resolve_across_hosts(mh):
    """A container on h1 asks Docker's embedded resolver for a container of h2's engine: not
    Docker's own name there, so it goes to the --dns server, h1's muslind (the gateway), which
    knows the other hosts' endpoints from the cluster store."""
    name, eng, _ = mh
    for here, there in (("h1", "h2"), ("h2", "h1")):
        gw = str(ipaddress.ip_network(lease(name, here)).network_address + 1)
        want = eng[there].ip(f"web-{there}")

        def answer() -> str:
            return eng[here].docker("run", "--rm", "--network", "net0", "--dns", gw, *ULIMIT, IMAGE, "nslookup",
                                    f"web-{there}", check=False).stdout

        assert wait_for(lambda: want in answer(), 30, f"web-{there} from {here}"), answer()


def test_a_cni_sandbox_on_the_third_host_reaches_both(mh):
    name, eng, _ = mh
    sb = core.sandbox(name, "h3", "c")
    a, b = eng["h1"].ip("web-h1"), eng["h2"].ip("web-h2")
    assert wait_for(lambda: sb_ping(sb["netns"], a) and sb_ping(sb["netns"], b), 30, "h3 sandbox -> containers")
    assert sb_fetch(sb["netns"], a) == "hello from muslin\n" == sb_fetch(sb["netns"], b)
    c = sb["address"].split("/")[0]
    assert eng["h1"].ping("web-h1", c) and eng["h2"].ping("web-h2", c)


def test_a_dockerd_restart_on_one_host_changes_nothing_on_the_other(mh):
    name, eng, _ = mh
    h1, h2 = eng["h1"], eng["h2"]
    st = core.LabState.load(name)
    sb = st.sandboxes["c"]["netns"]
    before = ns_kernel(h1.ns)
    h2.stop()
    assert sb_ping(sb, h1.ip("web-h1")) and h1.ping("web-h1", sb_addr(st))
    h2.start()
    b = wait_for(lambda: h2.docker("inspect", "-f", "{{.State.Running}}", "web-h2", check=False).stdout.strip()
                 == "true" and h2.ip("web-h2"), 60, "web-h2 restarted by its policy")
    assert wait_for(lambda: h1.ping("web-h1", b), 30, "h1 -> restarted h2 container")
    assert h1.fetch("web-h1", b) == "hello from muslin\n" and sb_fetch(sb, b) == "hello from muslin\n"
    assert ns_kernel(h1.ns) == before


def sb_addr(st: core.LabState) -> str:
    return st.sandboxes["c"]["address"].split("/")[0]


def test_docker_network_rm_on_one_host_leaves_the_other_working(mh):
    name, eng, _ = mh
    h1, h2 = eng["h1"], eng["h2"]
    st = core.LabState.load(name)
    sb = st.sandboxes["c"]["netns"]
    b = h2.ip("web-h2")
    before = ns_kernel(h2.ns)
    h1.docker("rm", "-f", "web-h1")
    h1.docker("network", "rm", "net0")
    assert "net0" not in h1.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert "mus-net0" in run("ip", "-n", h1.ns, "-o", "link", "show").stdout  # the agent's side stays
    assert sb_ping(sb, b) and sb_fetch(sb, b) == "hello from muslin\n"
    assert h2.ping("web-h2", sb_addr(st))
    assert ns_kernel(h2.ns) == before
    # and h1 can join again
    create(h1, "--subnet", CIDR)
    h1.docker("run", "-d", "--name", "web-h1b", "--network", "net0", *ULIMIT, IMAGE, "httpd", "-f", "-p", "80",
              "-h", "/www")
    assert wait_for(lambda: h1.ping("web-h1b", b), 30, "h1 (joined again) -> h2")
    assert h2.fetch("web-h2", h1.ip("web-h1b")) == "hello from muslin\n"



def test_a_published_port_answers_on_its_hosts_underlay_address_from_other_hosts(mh):
    """`docker run -p PORT:80` on h1: h2 (the host itself) and a sandbox on h3 fetch HTTP from
    h1's underlay address; the mapping is Muslin's (nft on h1), gone with the container."""
    name, eng, _ = mh
    h1 = eng["h1"]
    port = 20000 + int(suffix(4), 16) % 9000
    h1.docker("run", "-d", "--name", "pub-h1", "--network", "net0", "-p", f"{port}:80", *ULIMIT, IMAGE, "httpd",
              "-f", "-p", "80", "-h", "/www")
    url = f"http://{core.host_ip('h1')}:{port}/"
    sb = core.LabState.load(name).sandboxes["c"]["netns"]

    def fetch_from_h2() -> str:
        return run("ip", "netns", "exec", core.ns_host(name, "h2"), "busybox", "wget", "-q", "-O", "-", url).stdout

    assert wait_for(lambda: fetch_from_h2() == "hello from muslin\n", 30, f"h2 -> {url}")
    assert sb_fetch(sb, f"{core.host_ip('h1')}:{port}") == "hello from muslin\n"
    assert str(port) in run("ip", "netns", "exec", h1.ns, "nft", "list", "ruleset").stdout
    h1.docker("rm", "-f", "pub-h1")
    assert str(port) not in run("ip", "netns", "exec", h1.ns, "nft", "list", "ruleset").stdout
    assert fetch_from_h2() == ""


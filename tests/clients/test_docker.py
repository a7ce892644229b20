"""The real Docker engine with Muslin as its remote network + IPAM driver.

Docker runs in the root namespace (allowed for real-client tests); everything started
here (containerd, dockerd, muslind) is stopped by PID at the end and every network,
container, link and rule made is removed. Traffic goes only between our containers,
a throwaway namespace joined to the root namespace by a veth on a random private /30,
and 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import urllib.request

import pytest

from docker_util import IMAGE, DockerEnv, free_private_slash30, random_subnet, run, running_docker, wait_for

pytestmark = [pytest.mark.client, pytest.mark.timeout(900)]

ULIMIT = ("--ulimit", "nofile=1024:1024")


@pytest.fixture(scope="module")
def dk():
    for tool in ("dockerd", "containerd", "docker"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            pytest.skip(f"{tool} is not installed")
    with running_docker() as env:
        yield env


class Scope:
    """Networks/containers made by one test; removed at its end."""

    def __init__(self, dk: DockerEnv) -> None:
        self.dk = dk
        self.tag = secrets.token_hex(3)
        self.containers: list[str] = []
        self.networks: list[str] = []

    def net(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        full = f"mt-{name}-{self.tag}"
        r = self.dk.docker("network", "create", "-d", "muslin", "--ipam-driver", "muslin", "--label", "muslin-test",
                           *args, full, check=check)
        if r.returncode == 0:
            self.networks.append(full)
            self.dk.seen_bridges.update(v["bridge"] for k, v in muslin_state(self.dk).items()
                                        if k.startswith("networks/") and v.get("bridge"))
        return r

    def name(self, short: str) -> str:
        return f"mt-{short}-{self.tag}"

    def run(self, short: str, net: str, *args: str, cmd: tuple[str, ...] = ("sleep", "600"),
            check: bool = True) -> subprocess.CompletedProcess:
        full = self.name(short)
        self.containers.append(full)
        return self.dk.docker("run", "-d", "--name", full, "--label", "muslin-test", "--network", self.name(net),
                              *ULIMIT, *args, IMAGE, *cmd, check=check)

    def exec(self, short: str, *cmd: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.dk.docker("exec", self.name(short), *cmd, check=check, timeout=timeout)

    def ping(self, short: str, target: str) -> bool:
        return self.exec(short, "ping", "-c", "1", "-W", "2", target).returncode == 0

    def ip(self, short: str, net: str) -> str:
        out = self.dk.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", self.name(short)).stdout
        return json.loads(out)[self.name(net)]["IPAddress"]

    def cleanup(self) -> None:
        if self.containers:
            self.dk.docker("rm", "-f", *self.containers, check=False)
        for n in reversed(self.networks):
            self.dk.docker("network", "rm", n, check=False)


@pytest.fixture
def sc(dk):
    s = Scope(dk)
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture(scope="module")
def outside(dk):
    """A namespace joined to the root namespace by a veth on a random private /30."""
    from nsutil import Netns, suffix

    net = free_private_slash30()
    host_ip, ns_ip = list(net.hosts())
    ns = Netns(f"mt-out-{suffix()}")
    link = f"mto{suffix()}"
    try:
        run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth1", "netns", ns.name)
        run("ip", "addr", "add", f"{host_ip}/30", "dev", link)
        run("ip", "link", "set", link, "up")
        ns.run("ip", "addr", "add", f"{ns_ip}/30", "dev", "eth1")
        ns.run("ip", "link", "set", "eth1", "up")
        yield ns, str(host_ip), str(ns_ip), link
    finally:
        run("ip", "link", "del", link, check=False)
        ns.delete()


def muslin_state(dk: DockerEnv) -> dict:
    """What Muslin's store holds (read-only)."""
    from muslin.store import open_store

    store = open_store(str(dk.state))
    try:
        return {kv.key: kv.value for kv in store.list("")}
    finally:
        store.close()


def muslin_links(dk: DockerEnv) -> list[str]:
    """Links of this muslind's networks: their bridges and every port on them, plus the
    endpoint interfaces its records name (other Muslin instances may run in the root ns)."""
    state = muslin_state(dk)
    bridges = {v["bridge"] for k, v in state.items() if k.startswith("networks/") and v.get("bridge")}
    bridges |= set(dk.seen_bridges)
    named = {v.get(f) for k, v in state.items() if k.startswith("docker/endpoints/") for f in ("peer", "host_ifname")}
    links = json.loads(run("ip", "-j", "link", "show").stdout)
    return sorted(l["ifname"] for l in links
                  if l["ifname"] in bridges or l.get("master") in bridges or l["ifname"] in named)


def endpoint_ports(dk: DockerEnv, container_ip: str) -> list[dict]:
    for k, v in muslin_state(dk).items():
        if k.startswith("endpoints/") and any(a.split("/")[0] == container_ip for a in v["addresses"]):
            return v["ports"]
    return []


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


HTTPD = ("httpd", "-f", "-p", "80", "-h", "/www")


# ------------------------------------------------------------------------------ tests


def test_ping_http_ip_alias_dns(dk, sc):
    sub = random_subnet()
    fixed = str(sub.network_address + 77)
    sc.net("a", "--subnet", str(sub), "-o", "mtu=1300")
    sc.run("web", "a", "--ip", fixed, "--network-alias", "webalias", cmd=HTTPD)
    sc.run("cli", "a")
    assert sc.ip("web", "a") == fixed  # --ip honoured
    out = sc.exec("web", "ip", "-4", "-o", "addr", "show", "eth0", check=True).stdout
    assert f"{fixed}/24" in out
    assert "mtu 1300" in sc.exec("web", "ip", "link", "show", "eth0", check=True).stdout  # -o mtu
    assert sc.ping("cli", fixed)
    assert sc.ping("cli", sc.name("web"))  # container name via Docker's embedded DNS
    got = sc.exec("cli", "wget", "-O", "-", "http://webalias/", check=True).stdout
    assert "hello from muslin" in got  # alias resolved by Docker's DNS, HTTP over Muslin's bridge
    if dk.owned or run("iptables", "-S", "DOCKER-USER", check=False).returncode == 0:
        bridge = next(v["bridge"] for k, v in muslin_state(dk).items()
                      if k.startswith("networks/") and sub == ipaddress.ip_network(
                          v["range_sets"][0][0]["subnet"]))
        rules = run("iptables", "-S", "DOCKER-USER").stdout  # Docker's FORWARD DROP is undone for our bridge
        assert f"-i {bridge}" in rules and f"-o {bridge}" in rules and f":{bridge}\"" in rules
    route = sc.exec("cli", "ip", "route", check=True).stdout
    assert f"default via {sub.network_address + 1}" in route


def test_mac_address_via_api(dk, sc):
    sub = random_subnet()
    sc.net("mac", "--subnet", str(sub))
    mac = "02:42:%02x:%02x:%02x:%02x" % tuple(secrets.token_bytes(4))
    name = sc.name("macc")
    sc.containers.append(name)
    st, body = dk.api("POST", f"/containers/create?name={name}", {
        "Image": IMAGE, "Cmd": ["sleep", "600"], "MacAddress": mac, "Labels": {"muslin-test": ""},
        "HostConfig": {"NetworkMode": sc.name("mac"), "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 1024}]}})
    assert st == 201, body
    st, body = dk.api("POST", f"/containers/{name}/start")
    assert st == 204, body
    out = sc.exec("macc", "ip", "-o", "link", "show", "eth0", check=True).stdout
    assert mac in out.lower()
    sc.run("peer", "mac")
    assert sc.ping("peer", sc.ip("macc", "mac"))


def test_published_ports(dk, sc, outside):
    ns, host_ip, ns_ip, _ = outside
    sub = random_subnet()
    sc.net("pub", "--subnet", str(sub))
    fixed = 20000 + secrets.randbelow(9000)
    local = fixed + 1
    rng = (fixed + 2, fixed + 5)
    sc.run("web", "pub", "-p", f"{fixed}:80", "-p", "80", "-p", f"127.0.0.1:{local}:80",
           "-p", f"{rng[0]}-{rng[1]}:80", cmd=HTTPD)
    cip = sc.ip("web", "pub")
    ports = wait_for(lambda: endpoint_ports(dk, cip), 10, "published ports in Muslin's store")
    in_rng = [p["hostPort"] for p in ports if rng[0] <= p["hostPort"] <= rng[1]]
    eph = [p["hostPort"] for p in ports if p["hostPort"] not in (fixed, local, *in_rng)]
    assert len(ports) == 4 and len(in_rng) == 1 and eph and 32768 <= eph[0] <= 60999, ports
    assert "hello from muslin" in http_get(f"http://127.0.0.1:{in_rng[0]}/")
    # a binding to 127.0.0.1 answers there only
    assert "hello from muslin" in http_get(f"http://127.0.0.1:{local}/")
    r = ns.run("busybox", "wget", "-O", "-", f"http://{host_ip}:{local}/", check=False)
    assert r.returncode != 0
    # from another host (a namespace routed through the root namespace)
    for port in (fixed, eph[0]):
        got = ns.run("busybox", "wget", "-O", "-", f"http://{host_ip}:{port}/").stdout
        assert "hello from muslin" in got
    # from the host itself via loopback
    assert "hello from muslin" in http_get(f"http://127.0.0.1:{fixed}/")
    # hairpin: the container reaches its own published port via the host
    gw = str(sub.network_address + 1)
    got = sc.exec("web", "wget", "-O", "-", f"http://{gw}:{fixed}/", check=True).stdout
    assert "hello from muslin" in got
    # a second container on the same network reaches it via the published port too
    sc.run("cli", "pub")
    got = sc.exec("cli", "wget", "-O", "-", f"http://{host_ip}:{fixed}/", check=True).stdout
    assert "hello from muslin" in got
    dk.docker("rm", "-f", sc.name("web"))
    nft = run("nft", "list", "table", "inet", "muslin", check=False).stdout
    assert f"{fixed}" not in nft and cip not in nft
    with pytest.raises(Exception):
        http_get(f"http://127.0.0.1:{fixed}/")


def test_outbound_masquerade_and_internal_has_no_way_out(dk, sc, outside):
    ns, host_ip, ns_ip, _ = outside
    sc.net("ext", "--subnet", str(random_subnet()))
    sc.net("int", "--subnet", str(random_subnet()), "--internal")
    sc.run("e", "ext")
    sc.run("i", "int")
    sc.run("i2", "int")
    assert sc.ping("e", ns_ip)  # leaves through the host, masqueraded (the outside has no route back)
    assert sc.ping("i", sc.ip("i2", "int"))  # inside the internal network: fine
    assert "default" not in sc.exec("i", "ip", "route", check=True).stdout
    assert not sc.ping("i", ns_ip)
    assert not sc.ping("i", host_ip)
    # even with a hand-made default route, the host does not forward it out
    gw = sc.dk.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", sc.name("int")).stdout.strip()
    r = dk.docker("run", "--rm", "--label", "muslin-test", "--network", sc.name("int"), "--cap-add", "NET_ADMIN",
                  *ULIMIT, IMAGE, "sh", "-c", f"ip route add default via {gw} && ping -c1 -W2 {ns_ip}", check=False)
    assert r.returncode != 0, r.stdout


def test_two_networks_isolated_and_container_on_both(dk, sc):
    br = f"mtb{sc.tag}"
    sc.net("n1", "--subnet", str(random_subnet()), "-o", f"muslin.bridge={br}")
    sc.net("n2", "--subnet", str(random_subnet()))
    sc.run("a", "n1")
    sc.run("b", "n2")
    ip_a, ip_b = sc.ip("a", "n1"), sc.ip("b", "n2")
    assert "bridge" in run("ip", "-d", "link", "show", br).stdout  # -o muslin.bridge names it
    assert not sc.ping("a", ip_b)
    assert not sc.ping("b", ip_a)
    sc.run("both", "n1")
    n2_sub = ipaddress.ip_network(dk.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}",
                                            sc.name("n2")).stdout.strip())
    want = str(n2_sub.network_address + 99)
    dk.docker("network", "connect", "--ip", want, sc.name("n2"), sc.name("both"))
    assert sc.ip("both", "n2") == want
    links = sc.exec("both", "ip", "-o", "link", check=True).stdout
    assert "eth0" in links and "eth1" in links
    assert sc.ping("both", ip_a) and sc.ping("both", ip_b)
    dk.docker("network", "disconnect", sc.name("n2"), sc.name("both"))
    assert not sc.ping("both", ip_b)
    assert sc.ping("both", ip_a)


def test_restart_muslind_between_create_and_run(dk, sc):
    sc.net("rs", "--subnet", str(random_subnet()))
    dk.stop_muslind()
    dk.start_muslind()
    sc.run("x", "rs")
    sc.run("y", "rs")
    assert sc.ping("x", sc.ip("y", "rs"))


def test_restart_dockerd_keeps_networks(dk, sc):
    if not dk.owned:
        pytest.skip("Docker was already running: this test restarts only a dockerd it started itself")
    sub = random_subnet()
    sc.net("rd", "--subnet", str(sub))
    sc.run("old", "rd")
    old_eps = {k for k in muslin_state(dk) if k.startswith("docker/endpoints/")}
    assert old_eps
    dk.restart_dockerd()  # the container dies with dockerd (no live-restore)
    # Docker does not tell a not-yet-activated plugin about the dead endpoint: muslind's reconciler does
    wait_for(lambda: not (old_eps & {k for k in muslin_state(dk) if k.startswith("docker/endpoints/")}),
             20, "orphan endpoint cleanup")
    dk.docker("rm", "-f", sc.name("old"), check=False)
    held = wait_for(lambda: [k for k in muslin_state(dk) if k.startswith("ipam/") and "/ip/" in k
                             and k.split("/")[1] == str(sub).replace("/", "_")], 10, "the gateway's allocation")
    assert len(held) == 1, held  # only the gateway: the dead container's address was released
    sc.run("x", "rd")
    sc.run("y", "rd")
    assert sc.ping("x", sc.ip("y", "rd"))


def _snapshot(dk):
    nets = set(dk.docker("network", "ls", "-q").stdout.split())
    state = {k for k in muslin_state(dk) if not k.startswith("ipam/") or "/ip/" in k}
    dk.seen_bridges.update(v["bridge"] for k, v in muslin_state(dk).items() if k.startswith("networks/"))
    return nets, state, set(muslin_links(dk))


def test_bad_input_one_line_and_nothing_left(dk, sc, outside):
    _, host_ip, _, _ = outside
    sub = random_subnet()
    sc.net("ok", "--subnet", str(sub))
    before = _snapshot(dk)
    r = sc.net("bogus", "--subnet", str(random_subnet(avoid=[sub])), "-o", "bogus=1", check=False)
    assert r.returncode != 0 and "unknown option 'bogus'" in r.stderr, r.stderr
    print("unknown -o:", r.stderr.strip().splitlines()[0])
    r = sc.net("overlap", "--subnet", str(ipaddress.ip_network(f"{sub.network_address}/25")), check=False)
    assert r.returncode != 0 and "overlaps" in r.stderr, r.stderr
    print("overlap:", r.stderr.strip().splitlines()[0])
    r = sc.net("mode", "--subnet", str(random_subnet(avoid=[sub])), "-o", "muslin.mode=ipvlan", check=False)
    assert r.returncode != 0 and "muslin.mode" in r.stderr, r.stderr
    r = sc.net("route", "--subnet", str(ipaddress.ip_network(f"{host_ip}/24", strict=False)), check=False)
    assert r.returncode != 0 and "overlaps the host route" in r.stderr, r.stderr
    print("host route:", r.stderr.strip().splitlines()[0])
    r = dk.docker("network", "create", "-d", "muslin", "--subnet", str(ipaddress.ip_network(f"{host_ip}/24", strict=False)),
                  "--label", "muslin-test", sc.name("route2"), check=False)  # Docker's own IPAM, same check in the driver
    if r.returncode == 0:
        sc.networks.append(sc.name("route2"))
    assert r.returncode != 0 and "overlaps the host route" in r.stderr, r.stderr
    assert _snapshot(dk) == before
    # --ip outside the subnet
    outside_ip = str(random_subnet(avoid=[sub]).network_address + 5)
    r = sc.run("badip", "ok", "--ip", outside_ip, check=False)
    assert r.returncode != 0, r.stdout
    err = next(line for line in r.stderr.splitlines() if "rror" in line)
    print("--ip outside:", err)
    assert "outside" in err or "no configured subnet" in err or "invalid" in err.lower(), err
    dk.docker("rm", "-f", sc.name("badip"), check=False)
    assert _snapshot(dk) == before
    # an exhausted pool: a /30 has one address after the gateway
    small = random_subnet(30, avoid=[sub])
    sc.net("small", "--subnet", str(small))
    before = _snapshot(dk)
    sc.run("s1", "small")
    r = sc.run("s2", "small", check=False)
    assert r.returncode != 0 and "no free address" in r.stderr, r.stderr
    print("exhausted:", r.stderr.strip().splitlines()[0])
    dk.docker("rm", "-f", sc.name("s1"), sc.name("s2"), check=False)
    assert _snapshot(dk) == before


def test_default_pool_and_ip_range(dk, sc):
    sc.net("auto1")
    sc.net("auto2")
    subs = [dk.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", n).stdout.strip()
            for n in sc.networks]
    assert subs[0] != subs[1] and all(s.startswith("10.200.") for s in subs), subs
    sub = random_subnet()
    rng = ipaddress.ip_network(f"{sub.network_address + 128}/26")
    sc.net("rng", "--subnet", str(sub), "--ip-range", str(rng), "--aux-address", f"x={sub.network_address + 5}")
    sc.run("r1", "rng")
    assert ipaddress.ip_address(sc.ip("r1", "rng")) in rng
    sc.run("a1", "auto1")
    sc.run("a2", "auto1")
    assert sc.ping("a1", sc.ip("a2", "auto1"))


def test_join_existing_muslin_network(dk, sc):
    """-o muslin.network=NAME: a second Docker network joins the first one's Muslin network
    (same bridge, subnet and IPAM); removing the creator first leaves the joiner working."""
    sub = random_subnet()
    shared = f"shared-{sc.tag}"
    sc.net("j1", "--subnet", str(sub), "-o", f"muslin.network={shared}")
    sc.net("j2", "--subnet", str(sub), "-o", f"muslin.network={shared}")
    r = sc.net("j3", "--subnet", str(random_subnet(avoid=[sub])), "-o", f"muslin.network={shared}", check=False)
    assert r.returncode != 0 and "has subnet(s)" in r.stderr, r.stderr
    sc.run("p", "j1")
    sc.run("q", "j2")
    ip_p, ip_q = sc.ip("p", "j1"), sc.ip("q", "j2")
    assert ip_p != ip_q  # one IPAM for the subnet
    assert sc.ping("p", ip_q) and sc.ping("q", ip_p)
    nets = [k for k in muslin_state(dk) if k.startswith("networks/")]
    assert f"networks/{shared}" in nets
    dk.docker("rm", "-f", sc.name("p"))
    dk.docker("network", "rm", sc.name("j1"))
    sc.networks.remove(sc.name("j1"))
    assert f"networks/{shared}" in muslin_state(dk)
    sc.run("r", "j2")
    assert sc.ping("r", ip_q)
    dk.docker("rm", "-f", sc.name("q"), sc.name("r"))
    dk.docker("network", "rm", sc.name("j2"))
    sc.networks.remove(sc.name("j2"))
    assert f"networks/{shared}" not in muslin_state(dk)


def test_macvlan_mode(dk, sc, outside):
    """-o muslin.mode=macvlan on the outside link (a veth we own): containers sit on that
    link's L2 segment and reach the outside namespace without the host's routing."""
    ns, _, _, link = outside
    sub = random_subnet()
    router = sub.network_address + 254
    ns.run("ip", "addr", "add", f"{router}/{sub.prefixlen}", "dev", "eth1")
    try:
        sc.net("mv", "--subnet", str(sub), "--gateway", str(router), "-o", "muslin.mode=macvlan",
               "-o", f"muslin.parent={link}")
        sc.run("m1", "mv")
        sc.run("m2", "mv")
        assert sc.ping("m1", str(router))
        assert sc.ping("m1", sc.ip("m2", "mv"))
        assert f"default via {router}" in sc.exec("m1", "ip", "route", check=True).stdout
        details = run("ip", "-d", "link", "show", "dev", link).stdout
        assert "macvlan" not in details  # the parent itself is untouched
    finally:
        ns.run("ip", "addr", "del", f"{router}/{sub.prefixlen}", "dev", "eth1", check=False)


def test_ipv6_dual_stack(dk, sc):
    v6 = f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}::/64"
    sc.net("v6", "--subnet", str(random_subnet()), "--ipv6", "--subnet", v6)
    sc.run("a6", "v6")
    sc.run("b6", "v6")
    out = dk.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", sc.name("b6")).stdout
    b6 = json.loads(out)[sc.name("v6")]["GlobalIPv6Address"]
    assert ipaddress.ip_address(b6) in ipaddress.ip_network(v6)
    ok = wait_for(lambda: sc.exec("a6", "ping", "-6", "-c", "1", "-W", "2", b6).returncode == 0, 15, "ping6")
    assert ok
    gw6 = str(ipaddress.ip_network(v6).network_address + 1)
    assert f"default via {gw6}" in sc.exec("a6", "ip", "-6", "route", check=True).stdout


def test_with_dockers_builtin_ipam(dk, sc):
    """-d muslin without --ipam-driver: Docker's own IPAM allocates, Muslin wires."""
    sub = random_subnet()
    name = sc.name("bi")
    r = dk.docker("network", "create", "-d", "muslin", "--subnet", str(sub), "--label", "muslin-test", name)
    sc.networks.append(name)
    assert r.returncode == 0
    sc.run("b1", "bi")
    sc.run("b2", "bi")
    assert ipaddress.ip_address(sc.ip("b1", "bi")) in sub
    assert sc.ping("b1", sc.ip("b2", "bi"))


def test_zz_nothing_left(dk):
    """After docker rm -f and docker network rm: no link, allocation, record or nft entry."""
    ids = dk.docker("ps", "-aq", "--filter", "label=muslin-test").stdout.split()
    assert not ids
    wait_for(lambda: not muslin_links(dk), 10, "Muslin links to disappear")
    state = muslin_state(dk)
    left = [k for k in state if k.startswith(("networks/", "endpoints/", "docker/", "ipam-owner/"))
            or (k.startswith("ipam/") and "/ip/" in k)]
    assert left == [], left
    nft = run("nft", "list", "tables").stdout
    assert "inet muslin" not in nft, nft
    assert "muslin:" not in run("iptables", "-S", check=False).stdout

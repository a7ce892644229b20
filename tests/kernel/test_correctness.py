"""Issue 8's bugs, each on the real kernel through the real executables, in a namespace that
plays the host: no duplicate address after a failed connect, no hang after a failed network
setup, one state dir per host namespace, never adopt or delete what Muslin did not make, a
fixed bridge MAC, Docker-like connect, the exit-status contract, and an injected failure at
a step of create/connect leaves the host as it was."""

from __future__ import annotations

import ipaddress
import json
import sys
import time

import pytest
from nsutil import Muslind, random_subnet24, sh, tool
from test_cli_bridge import World, ip_of, world  # noqa: F401 - fixture

pytestmark = pytest.mark.kernel


def gw_of(subnet: str) -> str:
    return str(next(ipaddress.ip_network(subnet).hosts()))


def host_state(w: World) -> dict:
    """Links (name, kind, master, MAC), global addresses, routes and the nft ruleset of the host."""
    links = json.loads(sh("ip", "-n", w.host.name, "-d", "-j", "link", "show").stdout)
    addrs = json.loads(sh("ip", "-n", w.host.name, "-j", "addr", "show").stdout)
    return {
        "links": sorted((ln["ifname"], ln.get("linkinfo", {}).get("info_kind", ""), ln.get("master", ""),
                         ln.get("address", "")) for ln in links),
        "addrs": sorted((a["ifname"], i["local"], i["prefixlen"]) for a in addrs for i in a.get("addr_info", [])
                        if i.get("scope") == "global"),
        # IPv6 link-local and multicast routes come and go with links, and a bridge's carrier
        # ("linkdown") with its ports, asynchronously (linkwatch): not compared
        "routes": (sh("ip", "-n", w.host.name, "-4", "route", "show", "table", "all").stdout + "".join(
            line for line in sh("ip", "-n", w.host.name, "-6", "route", "show").stdout.splitlines(True)
            if not line.startswith(("fe80::", "multicast")))).replace(" linkdown", ""),
        "nft": w.host.run("nft", "list", "ruleset").stdout,
    }


def store_dump(state: str) -> dict:
    out = sh(sys.executable, "-c",
             "import sys,json;from muslin.store import open_store;s=open_store(sys.argv[1]);"
             "print(json.dumps({kv.key: kv.value for kv in s.list('')}))", state).stdout
    return json.loads(out)


def test_a_failed_connect_never_frees_another_networks_address(world):
    """Bug 1: `connect n2 X` failing (eth0 taken) released X's address on n1, so Y got it too."""
    w = world
    s1, s2 = random_subnet24(), random_subnet24()
    w.muslin("network", "create", "n1", "--subnet", s1)
    w.muslin("network", "create", "n2", "--subnet", s2)
    x, y = w.sandbox("x"), w.sandbox("y")
    a = str(ipaddress.ip_network(s1)[9])
    assert ip_of(w.connect("n1", x, "--ip", a, "--ifname", "eth0")) == a
    r = w.muslin("connect", "n2", x, "--ifname", "eth0", check=False)
    assert r.returncode == 4 and "eth0 already exists" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = w.muslin("connect", "n1", y, "--ip", a, check=False)
    assert r.returncode == 4 and "in use" in r.stderr, r.stderr
    assert w.ping(x, gw_of(s1))  # X still holds A, alone


def test_a_failed_network_setup_never_hangs(world, tmp_path):
    """Bug 2: the failure path of create_network took the network's lock a second time."""
    w = world
    before = host_state(w)
    t0 = time.monotonic()
    r = w.muslin("network", "create", "lan", "--driver", "macvlan", "--parent", "eth1",
                 "--subnet", random_subnet24(), check=False)
    assert r.returncode == 3 and "eth1 does not exist" in r.stderr, r.stderr
    r = sh("env", "MUSLIN_FAILPOINTS=firewall", tool("muslin"), "--host-netns", w.host.name, "--state-dir",
           w.state, "network", "create", "web", "--subnet", random_subnet24(), check=False, timeout=30)
    assert r.returncode == 7 and "failpoint firewall" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 20
    assert host_state(w) == before and json.loads(w.muslin("network", "ls", "-o", "json").stdout) == []
    w.muslin("network", "create", "web", "--subnet", random_subnet24())  # nothing is left locked
    w.muslin("network", "rm", "web")
    # Through muslind: a failed ADD answers, and later calls on that network do too.
    with Muslind(w.host, tmp_path / "agent") as d:
        conf = {"cniVersion": "1.0.0", "name": "lan", "type": "muslin-cni", "driver": "macvlan", "master": "eth1",
                "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": random_subnet24()}]]}}
        c = w.sandbox("c")
        for cmd in ("ADD", "DEL", "ADD", "DEL"):
            p = w.host.run("env", f"CNI_COMMAND={cmd}", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0",
                           f"CNI_NETNS=/run/netns/{c}", "CNI_PATH=/usr/lib/cni", f"MUSLIN_AGENT_SOCKET={d.sock}",
                           tool("muslin-cni"), input=json.dumps(conf), check=False, timeout=20)
            if cmd == "ADD":
                assert p.returncode == 1 and json.loads(p.stdout)["code"] == 3, p.stdout
                assert "eth1 does not exist" in json.loads(p.stdout)["msg"]
            else:
                assert p.returncode == 0, p.stdout
        assert store_dump(str(tmp_path / "agent")) == {}


def test_two_state_dirs_in_one_host_namespace(world, tmp_path):
    """Bug 3: a second state dir is refused, naming the first; the first's containers keep
    their connectivity and nothing of the first is rewritten or removed."""
    w = world
    subnet = random_subnet24()
    w.muslin("network", "create", "web", "--subnet", subnet)
    a, b = w.sandbox("a"), w.sandbox("b")
    w.connect("web", a, "-p", "8080:80")
    eb = w.connect("web", b)
    before = host_state(w)
    other = str(tmp_path / "other")
    r = sh(tool("muslin"), "--host-netns", w.host.name, "--state-dir", other, "network", "create", "web2",
           "--subnet", random_subnet24(), check=False)
    assert r.returncode == 4 and f"state dir {w.state}" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    # A CNI config with another dataDir, even on the same bridge name: refused the same way.
    c = w.sandbox("c")
    for bridge in ("mus-web", "mus-other"):
        conf = {"cniVersion": "1.0.0", "name": "web", "type": "muslin-cni", "bridge": bridge, "isGateway": True,
                "dataDir": other, "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": random_subnet24()}]]}}
        p = w.host.run("env", "CNI_COMMAND=ADD", "CNI_CONTAINERID=c9", "CNI_IFNAME=eth0", f"CNI_NETNS=/run/netns/{c}",
                       "CNI_PATH=/usr/lib/cni", f"MUSLIN_AGENT_SOCKET={tmp_path}/none.sock", tool("muslin-cni"),
                       input=json.dumps(conf), check=False)
        err = json.loads(p.stdout)
        assert p.returncode == 1 and err["code"] == 7 and f"state dir {w.state}" in err["msg"], p.stdout
        for cmd in ("DEL", "DEL"):  # the runtime's cleanup: harmless to the first state dir
            w.host.run("env", f"CNI_COMMAND={cmd}", "CNI_CONTAINERID=c9", "CNI_IFNAME=eth0",
                       f"CNI_NETNS=/run/netns/{c}", "CNI_PATH=/usr/lib/cni",
                       f"MUSLIN_AGENT_SOCKET={tmp_path}/none.sock", tool("muslin-cni"), input=json.dumps(conf))
    assert host_state(w) == before
    assert w.ping(a, ip_of(eb)) and w.ping(b, gw_of(subnet))


def test_never_adopts_or_deletes_what_muslin_did_not_make(world):
    """Bug 4: a veth named as --bridge was given the gateway and deleted with the network; a
    user's bridge was adopted and deleted too."""
    w = world
    sh("ip", "-n", w.host.name, "link", "add", "uxv0", "type", "veth", "peer", "name", "uxv1")
    before = host_state(w)
    r = w.muslin("network", "create", "n", "--bridge", "uxv0", "--subnet", random_subnet24(), check=False)
    assert r.returncode == 4 and "uxv0 exists and is a veth, not a bridge" in r.stderr, r.stderr
    sh("ip", "-n", w.host.name, "link", "add", "ubr0", "type", "bridge")
    sh("ip", "-n", w.host.name, "addr", "add", "10.99.99.1/24", "dev", "ubr0")
    before = host_state(w)
    r = w.muslin("network", "create", "n", "--bridge", "ubr0", "--subnet", random_subnet24(), check=False)
    assert r.returncode == 4 and "ubr0 exists and was not made by Muslin" in r.stderr, r.stderr
    assert host_state(w) == before
    subnet = random_subnet24()
    w.muslin("network", "create", "n", "--bridge", "ubr0", "--reuse-bridge", "--subnet", subnet)
    a, b = w.sandbox("a"), w.sandbox("b")
    w.connect("n", a)
    assert w.ping(a, ip_of(w.connect("n", b))) and w.ping(a, gw_of(subnet))
    w.muslin("network", "rm", "--force", "n")
    after = host_state(w)
    assert ("ubr0", "10.99.99.1", 24) in after["addrs"] and not any(x[1] == gw_of(subnet) for x in after["addrs"])
    # (a Linux bridge without a set MAC takes its ports': ubr0's is the user's business)
    assert [x[:3] for x in after["links"] if x[0] in ("ubr0", "uxv0", "uxv1")] == \
        [x[:3] for x in before["links"] if x[0] in ("ubr0", "uxv0", "uxv1")]
    assert "muslin" not in after["nft"]


def test_the_bridge_mac_is_fixed(world):
    """Bug 5: a bridge without a set MAC takes its lowest port's, changing as containers come and go."""
    w = world
    subnet = random_subnet24()
    w.muslin("network", "create", "web", "--subnet", subnet)
    net = json.loads(w.muslin("network", "inspect", "web", "-o", "json").stdout)

    def bridge_mac() -> str:
        return json.loads(sh("ip", "-n", w.host.name, "-j", "link", "show", "mus-web").stdout)[0]["address"]

    mac = bridge_mac()
    assert mac == net["bridge_mac"] and int(mac[:2], 16) & 2  # locally administered, recorded
    sbs = [w.sandbox(r) for r in "abcd"]
    for i, sb in enumerate(sbs):
        ep = w.connect("web", sb)
        assert bridge_mac() == mac
        # the lowest port MAC: a bridge without a fixed MAC would take it
        sh("ip", "-n", w.host.name, "link", "set", "dev", ep["host_ifname"], "address", f"02:00:00:00:00:0{i + 1}")
        assert bridge_mac() == mac
    assert w.ping(sbs[0], gw_of(subnet))
    for sb in sbs:
        w.muslin("disconnect", "web", sb)
        assert bridge_mac() == mac
    sh("ip", "-n", w.host.name, "link", "del", "mus-web")  # deleted by hand: made again, the same
    w.connect("web", sbs[0])
    assert bridge_mac() == mac and w.ping(sbs[0], gw_of(subnet))


def test_docker_like_connect(world):
    """Bug 8: the second network gets eth1; a network cannot be joined twice; the default route
    stays on the first interface unless asked."""
    w = world
    s1, s2, s3 = random_subnet24(), random_subnet24(), random_subnet24()
    for name, s in (("n1", s1), ("n2", s2), ("n3", s3)):
        w.muslin("network", "create", name, "--subnet", s)
    a = w.sandbox("a")
    assert w.connect("n1", a)["ifname"] == "eth0"
    assert w.connect("n2", a)["ifname"] == "eth1"
    r = w.muslin("connect", "n1", a, check=False)
    assert r.returncode == 4 and "already connected to network 'n1'" in r.stderr, r.stderr

    def default_via() -> str:
        return w.in_sb(a, "ip", "route", "show", "default", check=True).stdout.split()[2]

    assert default_via() == gw_of(s1)
    w.connect("n3", a, "--default-route")
    assert default_via() == gw_of(s3)
    assert w.ping(a, gw_of(s1)) and w.ping(a, gw_of(s2)) and w.ping(a, gw_of(s3))


def test_exit_status_contract(world):
    """Bug 9: 3 for what does not exist, 2 for what is invalid, each with one line."""
    w = world
    w.muslin("network", "create", "a", "--subnet", random_subnet24())
    w.muslin("network", "create", "c", "--subnet", random_subnet24())
    sb = w.sandbox("s")

    def status(*args: str) -> tuple[int, str]:
        r = w.muslin(*args, check=False)
        assert r.stderr.count("\n") <= 1 and "Traceback" not in r.stderr, r.stderr
        return r.returncode, r.stderr

    assert status("sandbox", "exec", "mt-nope-000", "--", "true")[0] == 3
    r = sh(tool("muslin"), "--host-netns", "mt-nope-000", "network", "ls", check=False)
    assert r.returncode == 3 and "host namespace mt-nope-000 does not exist" in r.stderr
    assert status("disconnect", "nope", sb) == (3, "error: network 'nope' does not exist\n")
    rc, err = status("disconnect", "a", "mt-nope-000")
    assert rc == 3 and "sandbox 'mt-nope-000' does not exist" in err
    assert status("disconnect", "a", sb)[0] == 0  # connected or not: idempotent
    rc, err = status("network", "create", "x", "--subnet", random_subnet24(), "--opt", "bogus=1")
    assert rc == 2 and "'bogus'" in err
    rc, err = status("connect", "a", sb, "--mac", "01:00:5e:00:00:01")
    assert rc == 2 and "multicast" in err
    r = w.muslin("network", "rm", "a", "b", "c", check=False)
    assert r.returncode == 3 and r.stdout.split() == ["a", "c"] and "b: network 'b' does not exist" in r.stderr
    assert json.loads(w.muslin("network", "ls", "-o", "json").stdout) == []


@pytest.mark.parametrize("step", ["bridge mus-web", "bridge address *", "firewall", "network record"])
def test_injected_failure_in_network_create_leaves_nothing(world, step):
    w = world
    before = host_state(w), store_dump(w.state)
    r = sh("env", f"MUSLIN_FAILPOINTS={step}", tool("muslin"), "--host-netns", w.host.name, "--state-dir",
           w.state, "network", "create", "web", "--subnet", random_subnet24(), "--subnet", "fd42:9::/64",
           check=False)
    assert r.returncode == 7 and "failpoint" in r.stderr, r.stderr
    assert (host_state(w), store_dump(w.state)) == before


@pytest.mark.parametrize("step", ["allocate", "veth *", "sandbox eth1", "firewall", "endpoint record"])
def test_injected_failure_in_connect_leaves_nothing(world, step):
    w = world
    w.muslin("network", "create", "n1", "--subnet", random_subnet24())
    w.muslin("network", "create", "web", "--subnet", random_subnet24())
    a = w.sandbox("a")
    w.connect("n1", a)
    before = host_state(w), store_dump(w.state), w.in_sb(a, "ip", "-o", "addr", "show", "scope", "global").stdout
    r = sh("env", f"MUSLIN_FAILPOINTS={step}", tool("muslin"), "--host-netns", w.host.name, "--state-dir",
           w.state, "connect", "web", a, "-p", "8080:80", check=False)
    assert r.returncode == 7 and "failpoint" in r.stderr, r.stderr
    assert (host_state(w), store_dump(w.state), w.in_sb(a, "ip", "-o", "addr", "show", "scope", "global").stdout) == before
    assert w.ping(a, gw_of(json.loads(w.muslin("network", "inspect", "n1", "-o", "json").stdout)
                         ["range_sets"][0][0]["subnet"]))

"""Names between the real clients: a Podman container (CNI: muslin-cni through muslind) and
a Docker container (the remote driver) on one Muslin network reach each other by name and
by `--network-alias`. Podman's container gets muslind's DNS from the CNI result; Docker's
embedded resolver answers Docker's own names and forwards the others to muslind (`--dns`
the gateway); muslind learns the Docker container's name and aliases from dockerd's API.
muslind forwards to no real resolver here (its upstream list is empty)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from docker_util import IMAGE, DockerEnv, random_subnet
from nsutil import suffix, tool
from mixed_util import docker_and_podman

pytestmark = [pytest.mark.client, pytest.mark.kernel, pytest.mark.timeout(900)]

for _tool in ("dockerd", "containerd", "docker", "podman"):
    if not shutil.which(_tool):
        pytest.skip(f"{_tool} is not installed", allow_module_level=True)


@pytest.fixture
def worlds(tmp_path):
    with docker_and_podman(tmp_path, "mpd-") as w:
        yield w


def muslin(dk: DockerEnv, *args: str):
    import subprocess

    return subprocess.run([tool("muslin"), "--state-dir", str(dk.state), *args], capture_output=True, text=True)


def endpoints(dk: DockerEnv, net: str) -> list:
    import json
    import subprocess

    out = subprocess.run([tool("muslin"), "--state-dir", str(dk.state), "network", "inspect", net, "-o", "json"],
                         capture_output=True, text=True).stdout
    return [(e["name"], e["aliases"], e["addresses"]) for e in json.loads(out or "{}").get("endpoints", [])]


def until(fn, timeout: float = 30, step: float = 0.3):
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > end:
            return v
        time.sleep(step)


def test_podman_and_docker_containers_find_each_other_by_name_and_alias(worlds):
    dk, pm = worlds
    tag = suffix()
    web, dnet = f"dns{tag}", f"mt-dns-{tag}"
    sub = random_subnet()
    gw = str(sub[1])
    # An internal Muslin network, joined by Docker: no default route in the containers and nothing
    # forwarded off the bridge, so no query can reach the machine's real resolver (Podman lists it
    # after muslind's in the container's resolv.conf); muslind forwards nothing from it either.
    # Docker does not know it is internal, so its own resolver still forwards to muslind.
    dc, pc = f"mt-d-{tag}", f"mt-p-{tag}"
    try:  # (everything made inside: a failed step still leaves nothing behind)
        muslin(dk, "network", "create", web, "--subnet", str(sub), "--internal")
        dk.docker("network", "create", "-d", "muslin", "--ipam-driver", "muslin", "--label", "muslin-test",
                  "--subnet", str(sub), "-o", f"muslin.network={web}", dnet)
        dk.docker("run", "-d", "--name", dc, "--label", "muslin-test", "--network", dnet,
                  "--network-alias", f"dalias{tag}", "--dns", gw, "--ulimit", "nofile=1024:1024", IMAGE,
                  "httpd", "-f", "-p", "80", "-h", "/www")
        dip = dk.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", dc).stdout.strip()
        pm.add_network({"cniVersion": "1.0.0", "name": web,
                        "plugins": [{"type": "muslin-cni", "network": web, "dataDir": str(dk.state),
                                     "capabilities": {"aliases": True}}]})
        pm.run(pc, web, "--network-alias", f"palias{tag}", cmd=("httpd", "-f", "-p", "80", "-h", "/www"))
        pip = pm.ipv4(pc)
        # Podman's container got muslind's DNS from the CNI result: the gateway, first
        rc = pm.exec(pc, "cat", "/etc/resolv.conf", check=True).stdout
        servers = [ln.split()[1] for ln in rc.splitlines() if ln.startswith("nameserver")]
        assert servers[:1] == [gw], rc
        # Podman -> Docker: the container name and its --network-alias (dockerd told muslind)
        for name in (dc, f"dalias{tag}"):
            out = until(lambda: dip in (r := pm.exec(pc, "nslookup", name, gw).stdout) and r, 60)
            assert out, (name, pm.exec(pc, "nslookup", name, gw).stdout, dk.log_tail())
        assert pm.exec(pc, "ping", "-c", "1", "-W", "2", dc).returncode == 0
        got = pm.exec(pc, "wget", "-q", "-O", "-", f"http://dalias{tag}/").stdout
        assert "hello from muslin" in got, got
        # Docker -> Podman: Docker's resolver forwards what it does not know to muslind. Docker 20.10's
        # forwarding now and then fails to dial out of the container ("network is unreachable" in
        # dockerd's log, nothing reaches muslind): each check is tried a few times.
        def in_docker(*cmd: str, want: str = "") -> bool:
            r = dk.docker("exec", dc, *cmd, check=False)
            return r.returncode == 0 and want in r.stdout
        for name in (pc, f"palias{tag}"):
            assert until(lambda: in_docker("nslookup", name, want=pip), 30), (name, endpoints(dk, web))
        assert until(lambda: in_docker("ping", "-c", "1", "-W", "2", f"palias{tag}"), 30)
        assert until(lambda: in_docker("wget", "-q", "-O", "-", f"http://{pc}/", want="hello from muslin"), 30)
        # Podman -> Podman's own alias through resolv.conf (nslookup with no server named)
        assert pip in pm.exec(pc, "nslookup", f"palias{tag}").stdout
        # the Docker container leaves: its name stops resolving
        dk.docker("rm", "-f", dc)
        assert until(lambda: dip not in pm.exec(pc, "nslookup", dc, gw).stdout, 30)
    except AssertionError:
        Path("/tmp/dnsq.log").write_text(dk.log_tail(400000))
        raise
    finally:
        dk.docker("rm", "-f", dc, check=False)
        pm.rm(pc)
        dk.docker("network", "rm", dnet, check=False)
        muslin(dk, "network", "rm", "--force", web)

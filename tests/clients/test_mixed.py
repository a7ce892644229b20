"""One network, two worlds: a Docker container (CNM, through muslind) and a Podman
container (CNI, muslin-cni handing its requests to the same muslind) on one Muslin
network: one bridge, one subnet, one IPAM; they get distinct addresses and ping."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from docker_util import IMAGE, random_subnet
from nsutil import suffix
from mixed_util import docker_and_podman

from muslin.model import names

pytestmark = [pytest.mark.client, pytest.mark.kernel, pytest.mark.timeout(900)]

for _tool in ("dockerd", "containerd", "docker", "podman"):
    if not shutil.which(_tool):
        pytest.skip(f"{_tool} is not installed", allow_module_level=True)


@pytest.fixture
def worlds(tmp_path):
    with docker_and_podman(tmp_path, "mpx-") as w:
        yield w


def test_docker_and_podman_containers_share_one_muslin_network(worlds):
    dk, pm = worlds
    tag = suffix()
    web, dnet = f"web{tag}", f"mt-web-{tag}"
    sub = random_subnet()
    dk.docker("network", "create", "-d", "muslin", "--ipam-driver", "muslin", "--label", "muslin-test",
              "--subnet", str(sub), "-o", f"muslin.network={web}", dnet)
    dc = f"mt-d-{tag}"
    try:
        dk.docker("run", "-d", "--name", dc, "--label", "muslin-test", "--network", dnet,
                  "--ulimit", "nofile=1024:1024", IMAGE, "sleep", "600")
        dip = dk.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", dc).stdout.strip()
        # dataDir: Podman's DELs come from conmon's cleanup process, which does not inherit
        # our MUSLIN_* environment; the config itself names the store muslind uses.
        pm.add_network({"cniVersion": "1.0.0", "name": web,
                        "plugins": [{"type": "muslin-cni", "network": web, "dataDir": str(dk.state)}]})
        pc = f"p{tag}"
        pm.run(pc, web)
        pip = pm.ipv4(pc)
        assert pip != dip and {pip, dip} <= {str(a) for a in sub.hosts()}
        assert pm.ping(pc, dip)
        assert dk.docker("exec", dc, "ping", "-c", "1", "-W", "2", pip, check=False).returncode == 0
        # One bridge carries both.
        ports = subprocess.run(["ip", "-o", "link", "show", "master", names.bridge_name(web)],
                               capture_output=True, text=True).stdout
        assert len(ports.splitlines()) == 2, ports
        # Docker leaves first: the network stays for the Podman container...
        dk.docker("rm", "-f", dc)
        dk.docker("network", "rm", dnet)
        assert Path(f"/sys/class/net/{names.bridge_name(web)}").exists()
        assert pm.ping(pc, str(sub[1]))
        # ...and goes with its last CNI endpoint.
        pm.rm(pc)
        assert wait_for_absent(Path(f"/sys/class/net/{names.bridge_name(web)}")), dk.log_tail()
    finally:
        dk.docker("rm", "-f", dc, check=False)
        dk.docker("network", "rm", dnet, check=False)
        pm.rm(f"p{tag}")
        bridge = Path(f"/sys/class/net/{names.bridge_name(web)}")
        if not wait_for_absent(bridge, 5):  # the test has failed already; leave the host clean
            subprocess.run(["ip", "link", "del", bridge.name], capture_output=True)


def wait_for_absent(path: Path, timeout: float = 15) -> bool:
    """Podman's DEL may come from its cleanup process just after `podman rm` returns."""
    import time

    end = time.monotonic() + timeout
    while path.exists() and time.monotonic() < end:
        time.sleep(0.2)
    return not path.exists()

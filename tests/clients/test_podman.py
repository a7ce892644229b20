"""Podman 4.3 (CNI backend) running real busybox containers on Muslin's CNI plugins.

Podman runs in the root namespace with a private root/runroot (vfs) and its own
containers.conf whose cni_plugin_dirs = [a temp dir with muslin-cni/muslin-ipam, /usr/lib/cni].
The test subnet is a random 10.X.Y.0/24 that overlaps no route on this machine.
Everything is removed at the end, even on failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from nsutil import suffix, tool
from docker_util import root_ns_lock
from podman_util import Podman, drop_empty_tables, free_port, free_subnet, nft_tables

from muslin.model import names

pytestmark = [pytest.mark.client, pytest.mark.kernel]

if not shutil.which("podman") or not Path("/usr/sbin/runc").exists():
    pytest.skip("podman and runc are needed", allow_module_level=True)


def sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def http_get(url: str) -> str:
    import time
    import urllib.request

    for _ in range(20):
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return r.read().decode()
        except OSError:
            time.sleep(0.3)
    return ""


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def nft_has_muslin() -> bool:
    return "table inet muslin" in sh("nft", "list", "tables").stdout


def store_keys(state: Path) -> list[str]:
    from muslin.store import open_store

    if not (state / "muslin.db").exists():
        return []
    st = open_store(str(state))
    try:
        return sorted(kv.key for p in ("networks/", "endpoints/", "ipam/", "ipam-owner/") for kv in st.list(p)
                      if not kv.key.endswith("/last"))
    finally:
        st.close()


@pytest.fixture
def env(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for n in ("muslin-cni", "muslin-ipam"):
        (plugins / n).symlink_to(tool(n))
    state = tmp_path / "state"
    base = Path(tempfile.mkdtemp(prefix="mpd-"))  # podman wants a runroot under 50 characters
    with root_ns_lock():  # one Muslin at a time in the root namespace
        pm = Podman(base, [str(plugins), "/usr/lib/cni"],
                    env={"MUSLIN_AGENT_SOCKET": str(tmp_path / "no-agent.sock")})
        try:
            yield pm, state
        finally:
            pm.destroy()


def test_podman_with_muslin_cni(env):
    pm, state = env
    sub = free_subnet()
    name = "mpod" + suffix()
    bridge = names.bridge_name(name)
    had_table = nft_has_muslin()
    pm.add_network({"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "muslin-cni", "isGateway": True, "isDefaultGateway": True, "ipMasq": True, "dataDir": str(state),
         "capabilities": {"portMappings": True, "aliases": True},
         "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": str(sub)}]]}}]})
    c1, c2 = "a" + suffix(), "b" + suffix()
    id1 = pm.run(c1, name)
    id2 = pm.run(c2, name, "--ip", str(sub[50]), "--mac-address", "02:42:ac:11:22:33")
    ip1, ip2 = pm.ipv4(c1), pm.ipv4(c2)
    assert ip1 in [str(a) for a in sub.hosts()] and ip2 == str(sub[50])
    assert pm.mac(c2) == "02:42:ac:11:22:33"
    assert pm.ping(c1, ip2) and pm.ping(c2, ip1)
    assert pm.ping(c1, str(sub[1])) and pm.ping(c2, str(sub[1]))
    # Podman's view agrees with the result we returned.
    info = json.loads(pm("inspect", c2).stdout)[0]["NetworkSettings"]["Networks"][name]
    assert info["IPAddress"] == ip2 and info["MacAddress"] == "02:42:ac:11:22:33"
    # A published port (podman -p -> runtimeConfig.portMappings -> Muslin's nft DNAT), reached
    # from the host through the gateway address of our bridge, and HTTP between containers.
    port = free_port()
    c3 = "w" + suffix()
    id3 = pm.run(c3, name, "-p", f"{port}:8080", cmd=("httpd", "-f", "-p", "8080", "-h", "/www"))
    ip3 = pm.ipv4(c3)
    assert "hello from muslin" in pm.exec(c1, "wget", "-q", "-O", "-", f"http://{ip3}:8080/").stdout
    assert "hello from muslin" in http_get(f"http://{sub[1]}:{port}/")
    assert "hello from muslin" in http_get(f"http://127.0.0.1:{port}/")
    # The same host port again: podman run fails with Muslin's one line, and nothing of it stays.
    keys = store_keys(state)
    r = pm("run", "-d", "--name", "x" + suffix(), "--network", name, "-p", f"{port}:80", "--rootfs",
           str(pm.rootfs), "/bin/busybox", "sleep", "600", check=False)
    assert r.returncode != 0 and f"host port *:{port}/tcp is already published" in r.stderr, r.stderr
    assert store_keys(state) == keys
    veths = [names.host_ifname(name, f"{cid}/eth0") for cid in (id1, id2, id3)]
    assert link_exists(bridge) and all(link_exists(v) for v in veths)
    assert len([k for k in store_keys(state) if "/ip/" in k]) == 3

    pm.rm(c1, c2, c3)
    assert not link_exists(bridge)
    assert not any(link_exists(v) for v in veths)
    assert store_keys(state) == []
    # Our network is out of Muslin's nft table; the table itself is gone unless another Muslin
    # (e.g. a Docker test's muslind on this shared machine) has networks of its own in it.
    table = sh("nft", "list", "table", "inet", "muslin").stdout
    assert bridge not in table and str(sub) not in table
    if not had_table and nft_has_muslin():
        assert "mus-" in table, table
    assert f"muslin:{bridge}" not in sh("iptables", "-S").stdout


def test_podman_reference_bridge_with_muslin_ipam(env):
    pm, state = env
    sub = free_subnet()
    name = "mpib" + suffix()
    bridge = "mpb" + suffix()
    had_fw = sh("iptables", "-S", "CNI-FORWARD").returncode == 0
    tables = nft_tables()
    pm.add_network({"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
         "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": str(sub)}]], "routes": [{"dst": "0.0.0.0/0"}],
                  "dataDir": str(state)}},
        {"type": "firewall"}]})  # as Podman's own configs: lets bridge traffic past a FORWARD DROP policy
    try:
        c1, c2 = "a" + suffix(), "b" + suffix()
        pm.run(c1, name)
        pm.run(c2, name, "--ip", str(sub[60]))
        ip1, ip2 = pm.ipv4(c1), pm.ipv4(c2)
        assert ip2 == str(sub[60]) and ip1 in [str(a) for a in sub.hosts()]
        assert pm.ping(c1, ip2) and pm.ping(c2, ip1) and pm.ping(c1, str(sub[1]))
        assert len([k for k in store_keys(state) if "/ip/" in k]) == 2
        pm.rm(c1, c2)
        assert store_keys(state) == []
    finally:
        pm.destroy()
        # The reference plugins leave their bridge and (empty) firewall chains: ours to remove.
        if link_exists(bridge):
            sh("ip", "link", "del", bridge)
        if not had_fw:
            sh("iptables", "-D", "FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules",
               "-j", "CNI-FORWARD")
            for chain in ("CNI-FORWARD", "CNI-ADMIN"):
                sh("iptables", "-F", chain)
            for chain in ("CNI-FORWARD", "CNI-ADMIN"):
                sh("iptables", "-X", chain)
            drop_empty_tables(tables)  # and the ip filter table iptables-nft made for them

"""`muslin install --root T`, then Podman (CNI backend) with T's plugin dir as its only plugin
dir and T's conflist as its network: containers get addresses and ping each other and the
gateway, first through a muslind started from T's muslind.toml (the plugin hands its
requests to it), then with muslind stopped (the plugin does the work itself); `podman rm`
removes the bridge; `muslin uninstall --root T` leaves T as it was, file by file, but for
the lock file Podman itself put next to the conflist.

Podman and muslind run in a test namespace that plays the host (podman through
`nsenter --net`, so /sys and the cgroups stay the machine's): nothing is made in the root
namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nsutil import suffix, tool
from podman_util import Podman, free_subnet

from muslin.model import names

pytestmark = [pytest.mark.client, pytest.mark.kernel]

if not shutil.which("podman") or not Path("/usr/sbin/runc").exists():
    pytest.skip("podman and runc are needed", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
from test_install import snapshot  # noqa: E402


def endpoints(state: Path) -> list[str]:
    from muslin.store import open_store

    st = open_store(str(state))
    try:
        return [kv.key for kv in st.list("endpoints/")]
    finally:
        st.close()


def test_podman_on_what_muslin_install_wrote(tmp_path, netns):
    host = netns("host")
    root = tmp_path / "root"
    (root / "etc/cni/net.d").mkdir(parents=True)  # as on a host with CNI installed
    before = snapshot(root)
    state, sock = tmp_path / "state", tmp_path / "muslind.sock"
    sub = free_subnet()
    name = "minst" + suffix()
    r = subprocess.run([tool("muslin"), "install", "--root", str(root), "--cni-network", name, "--subnet", str(sub),
                        "--state-dir", str(state), "--agent-socket", str(sock), "--set", "docker-socket=",
                        "--set", "reconcile-interval=0", "--completion", ""],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    plugin_dir, conf_dir = root / "opt/cni/bin", root / "etc/cni/net.d"
    base = Path(tempfile.mkdtemp(prefix="mpi-"))  # podman wants a short runroot
    pm = Podman(base, [str(plugin_dir)], netns=host.name)
    shutil.rmtree(pm.net_dir)
    pm.net_dir.symlink_to(conf_dir)  # its network_config_dir is T's conflist dir
    pm.networks.append(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSLIN_")}
    d = host.popen(tool("muslind"), "--config", str(root / "etc/muslin/muslind.toml"), env=env,
                   stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 30
        while not sock.exists():
            assert d.poll() is None and time.monotonic() < end, d.stderr.read()
            time.sleep(0.1)
        a, b = "a" + suffix(), "b" + suffix()
        pm.run(a, name)
        pm.run(b, name)
        ip_a, ip_b = pm.ipv4(a), pm.ipv4(b)
        assert ip_a in [str(x) for x in sub.hosts()] and ip_b in [str(x) for x in sub.hosts()]
        assert pm.ping(a, ip_b) and pm.ping(b, ip_a) and pm.ping(a, str(sub[1]))
        assert len(endpoints(state)) == 2
        d.terminate()  # without muslind the plugin does the work itself
        assert d.wait(20) == 0
        c = "c" + suffix()
        pm.run(c, name)
        assert pm.ping(c, ip_a) and len(endpoints(state)) == 3
        pm.rm(a, b, c)
        assert endpoints(state) == []
        assert names.bridge_name(name) not in host.links_after_reap() and host.links() == ["lo"]
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()
        pm.net_dir.unlink()
        pm.destroy()
    r = subprocess.run([tool("muslin"), "uninstall", "--root", str(root)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    after = snapshot(root)
    lock = "etc/cni/net.d/cni.lock"  # Podman's (libcni's) own lock file: not install's to remove
    assert lock in after and after[lock][0] == "file"
    del after[lock]
    assert after == before

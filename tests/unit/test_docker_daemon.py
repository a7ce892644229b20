"""muslind end to end without the kernel: Docker's handshake and IPAM calls over the
plugin's Unix socket, bad requests, and a clean SIGTERM shutdown that removes the sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "clients"))
from docker_util import unix_post  # noqa: E402


def raw_post(path: str, url: str, body: bytes) -> tuple[int, bytes]:
    import http.client
    import socket

    class C(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(path)

    c = C("localhost", timeout=10)
    c.request("POST", url, body=body)  # no Content-Type, like Docker
    r = c.getresponse()
    return r.status, r.read()


@pytest.fixture
def muslind(tmp_path):
    dsock, asock = str(tmp_path / "p" / "muslin.sock"), str(tmp_path / "a.sock")
    exe = Path(sys.executable).parent / "muslind"
    p = subprocess.Popen([str(exe), "--docker-socket", dsock, "--agent-socket", asock, "--state-dir",
                          str(tmp_path / "state"), "--reconcile-interval", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, MUSLIN_STATE_DIR=str(tmp_path / "state")))
    end = time.monotonic() + 20
    while not (os.path.exists(dsock) and os.path.exists(asock)):
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < end, "muslind did not start"
        time.sleep(0.05)
    try:
        yield p, dsock, asock
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_handshake_ipam_and_shutdown(muslind):
    p, dsock, asock = muslind
    assert raw_post(dsock, "/Plugin.Activate", b"") == (200, b'{"Implements": ["NetworkDriver", "IpamDriver"]}')
    st, caps = unix_post(dsock, "/NetworkDriver.GetCapabilities")
    assert st == 200 and caps["Scope"] == "local"
    st, spaces = unix_post(dsock, "/IpamDriver.GetDefaultAddressSpaces")
    assert spaces["LocalDefaultAddressSpace"] == "MuslinLocal"
    st, pool = unix_post(dsock, "/IpamDriver.RequestPool", {"AddressSpace": "MuslinLocal", "Pool": "10.123.0.0/24",
                                                             "SubPool": "", "Options": None, "V6": False})
    assert pool == {"PoolID": "MuslinLocal/10.123.0.0/24", "Pool": "10.123.0.0/24", "Data": {}}
    st, gw = unix_post(dsock, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "",
                                                             "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    assert gw == {"Address": "10.123.0.1/24", "Data": {}}
    st, a = unix_post(dsock, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.124.0.9"})
    assert st == 200 and a == {"Error": "address 10.124.0.9 is outside the network's subnet 10.123.0.0/24"}
    st, a = unix_post(dsock, "/NetworkDriver.Join", {"NetworkID": "a" * 64, "EndpointID": "b" * 64})
    assert st == 200 and "does not exist" in a["Err"]
    st, a = unix_post(dsock, "/NetworkDriver.CreateNetwork", {"NetworkID": "a" * 64,
                                                              "Options": {"com.docker.network.generic": {"x": "1"}}})
    assert st == 200 and a["Err"].startswith("unknown option 'x'")
    assert raw_post(dsock, "/NetworkDriver.CreateNetwork", b"{nope")[0] == 400
    assert raw_post(dsock, "/NetworkDriver.Bogus", b"")[0] == 404
    assert unix_post(dsock, "/IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "10.123.0.1"})[1] == {}
    assert unix_post(dsock, "/IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})[1] == {}
    # the CNI agent socket answers one JSON line per request line
    import json
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(asock)
        s.sendall(b'{"plugin": "nope", "env": {}}\n')
        ans = json.loads(s.makefile("rb").readline())
    assert ans["rc"] == 1 and "unknown plugin" in ans["stdout"]
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    assert not os.path.exists(dsock) and not os.path.exists(asock)
    assert "Traceback" not in p.stderr.read()


def test_refuses_a_socket_in_use(muslind, tmp_path):
    p, dsock, asock = muslind
    r = subprocess.run([str(Path(sys.executable).parent / "muslind"), "--docker-socket", dsock, "--agent-socket", "",
                        "--state-dir", str(tmp_path / "s2")], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == f"error: another server already listens on {dsock}"
    assert os.path.exists(dsock)  # the running one keeps its socket

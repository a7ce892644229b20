"""A real etcd 3.4 for tests: free loopback ports, a temp data dir, stopped by PID.

`Certs` makes a CA, a server certificate for 127.0.0.1 and client certificates with
`openssl`; `EtcdServer(certs=..., auth=...)` serves https with --client-cert-auth and
enables etcd's user/password authentication; `EtcdCluster(n)` runs n members."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def _die_with_parent() -> None:
    """etcd gets SIGTERM if the test process dies without cleaning up (PR_SET_PDEATHSIG)."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Certs:
    """lab/pki.py's CA, server certificate for 127.0.0.1 (server.pem/.key) and client
    certificate without CommonName (client.pem/.key), and `other_ca()`: a CA that signed
    nothing here, with a client certificate of its own (other-client.pem/.key)."""

    def __init__(self, d: str | Path) -> None:
        from muslin.lab import pki

        self.pki = pki.make(d)
        self.dir = Path(d)
        self.ca, self.server, self.server_key = self.pki.ca, self.pki.server, self.pki.server_key
        self.client, self.client_key = self.pki.client, self.pki.client_key

    def other_ca(self) -> str:
        from muslin.lab import pki

        ca = pki.self_signed(self.dir, "other-ca", "/CN=someone-else")
        pki.signed(self.dir, "other-client", "/O=stranger", "cli", ca)
        return ca[0]


def _get(url: str, certs: Certs | None) -> bytes:
    import ssl
    ctx = None
    if certs is not None:
        ctx = ssl.create_default_context(cafile=certs.ca)
        ctx.load_cert_chain(certs.client, certs.client_key)
    with urllib.request.urlopen(url, timeout=1, context=ctx) as r:
        return r.read()


class EtcdServer:
    """One etcd member. `certs`: serve https with --client-cert-auth; `auth`: (user, password)
    of a user with read-write on every key, and authentication enabled (root's password
    is `root-<password>`); `cluster`: the members' `name=peer URL` list (EtcdCluster)."""

    def __init__(self, data_dir: str | None = None, certs: Certs | None = None,
                 auth: tuple[str, str] | None = None, name: str = "t", extra: tuple[str, ...] = ()) -> None:
        self.dir = data_dir or tempfile.mkdtemp(prefix="muslin-etcd-")
        self.port = free_port()
        self.peer = free_port()
        self.proc: subprocess.Popen | None = None
        self.certs, self.auth, self.name, self.extra = certs, auth, name, extra
        self.peer_tls = False  # EtcdCluster: the members talk TLS to each other too
        self.initial_cluster = f"{name}={self.peer_url}"
        self.auth_enabled = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.certs else 'http'}://127.0.0.1:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"{'https' if self.peer_tls else 'http'}://127.0.0.1:{self.peer}"

    def launch(self) -> EtcdServer:
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd is not installed (apt-get install etcd-server)")
        c = self.client_url
        tls = ["--cert-file", self.certs.server, "--key-file", self.certs.server_key,
               "--trusted-ca-file", self.certs.ca, "--client-cert-auth"] if self.certs else []
        if self.peer_tls:
            tls += ["--peer-cert-file", self.certs.server, "--peer-key-file", self.certs.server_key,
                    "--peer-trusted-ca-file", self.certs.ca, "--peer-client-cert-auth"]
        self.log = open(os.path.join(self.dir, f"etcd-{self.name}.log"), "ab")
        self.proc = subprocess.Popen(
            ["etcd", "--name", self.name, "--data-dir", os.path.join(self.dir, f"data-{self.name}"),
             "--listen-client-urls", c, "--advertise-client-urls", c, "--listen-peer-urls", self.peer_url,
             "--initial-advertise-peer-urls", self.peer_url, "--initial-cluster", self.initial_cluster,
             *tls, *self.extra],
            stdout=self.log, stderr=self.log, start_new_session=True, preexec_fn=_die_with_parent)
        return self

    def wait(self, timeout: float = 20) -> EtcdServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if b"true" in _get(f"{self.client_url}/health", self.certs):
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}, see {self.dir}/etcd-{self.name}.log")
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not become healthy in {timeout:.0f} s")

    def start(self) -> EtcdServer:
        self.launch().wait()
        if self.auth and not self.auth_enabled:
            enable_auth(self.client_url, self.certs, *self.auth)
            self.auth_enabled = True
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def etcdctl(url: str, certs: Certs | None, *args: str, user: str = "") -> str:
    tls = ["--cacert", certs.ca, "--cert", certs.client, "--key", certs.client_key] if certs else []
    r = subprocess.run(["etcdctl", "--endpoints", url, *tls, *(["--user", user] if user else []), *args],
                       capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"})
    if r.returncode != 0:
        raise RuntimeError(f"etcdctl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def enable_auth(url: str, certs: Certs | None, user: str, password: str) -> None:
    """A root user (password root-<password>), `user` with read-write on every key, auth on."""
    etcdctl(url, certs, "user", "add", f"root:root-{password}")
    etcdctl(url, certs, "user", "grant-role", "root", "root")
    etcdctl(url, certs, "user", "add", f"{user}:{password}")
    etcdctl(url, certs, "role", "add", "muslin")
    etcdctl(url, certs, "role", "grant-permission", "muslin", "--prefix=true", "readwrite", "")
    etcdctl(url, certs, "user", "grant-role", user, "muslin")
    etcdctl(url, certs, "auth", "enable")


class EtcdCluster:
    """n members on loopback, started together (they need a quorum to come up); with `certs`
    clients and peers both speak TLS with certificates (docs/multihost.md's command line)."""

    def __init__(self, n: int = 3, certs: Certs | None = None, auth: tuple[str, str] | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="muslin-etcdc-")
        self.members = [EtcdServer(self.dir, certs, None, name=f"m{i}") for i in range(n)]
        for m in self.members:
            m.peer_tls = certs is not None
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial
        self.certs, self.auth = certs, auth

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> EtcdCluster:
        for m in self.members:
            m.launch()
        for m in self.members:
            m.wait(30)
        if self.auth:
            enable_auth(self.members[0].client_url, self.certs, *self.auth)
        return self

    def destroy(self) -> None:
        for m in self.members:
            m.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

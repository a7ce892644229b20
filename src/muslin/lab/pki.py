"""Certificates for an etcd served over TLS, made with `openssl` (lab --tls, and the tests).

`make(dir, ips)`: a CA (ca.pem), a server certificate naming the given addresses and
localhost (server.pem/.key), and a client certificate without CommonName
(client.pem/.key: etcd 3.4's JSON gateway refuses a client certificate carrying one,
"CommonName of client sending a request against gateway will be ignored"). Keys are 0600.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from muslin.model.errors import Unavailable

DAYS = "30"


@dataclass(frozen=True)
class Pki:
    dir: str
    ca: str
    ca_key: str
    server: str
    server_key: str
    client: str
    client_key: str


def openssl(*args: str) -> None:
    try:
        r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise Unavailable("openssl is not installed (apt-get install openssl)") from None
    if r.returncode != 0:
        raise Unavailable(f"openssl {args[0]}: {(r.stderr.strip().splitlines() or ['failed'])[-1]}")


def self_signed(d: Path, name: str, subject: str) -> tuple[str, str]:
    crt, key = d / f"{name}.pem", d / f"{name}.key"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt), "-days", DAYS,
            "-subj", subject)
    os.chmod(key, 0o600)
    return str(crt), str(key)


def signed(d: Path, name: str, subject: str, ext: str, ca: tuple[str, str]) -> tuple[str, str]:
    crt, key, csr = d / f"{name}.pem", d / f"{name}.key", d / f"{name}.csr"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", subject)
    openssl("x509", "-req", "-in", str(csr), "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-out", str(crt),
            "-days", DAYS, "-extfile", str(d / "ext.cnf"), "-extensions", ext)
    os.chmod(key, 0o600)
    csr.unlink(missing_ok=True)
    return str(crt), str(key)


def make(d: str | Path, ips: tuple[str, ...] = ("127.0.0.1",)) -> Pki:
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    san = ",".join([f"IP:{ip}" for ip in ips] + ["DNS:localhost"])
    (d / "ext.cnf").write_text(f"[srv]\nsubjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n"
                               "[cli]\nextendedKeyUsage=clientAuth\n")
    ca = self_signed(d, "ca", "/CN=muslin-etcd-ca")
    server = signed(d, "server", "/CN=etcd", "srv", ca)
    client = signed(d, "client", "/O=muslin", "cli", ca)
    return Pki(str(d), ca[0], ca[1], server[0], server[1], client[0], client[1])

"""Host facts the Docker front-end needs (routes, links, ports) and its DOCKER-USER rules.

Docker (with --iptables=true, its default) sets the filter FORWARD policy to DROP; with
br_netfilter that drops traffic between containers on a Muslin bridge and from Muslin
bridges to the outside. Docker's documented hook for other software is the DOCKER-USER
chain, evaluated first in FORWARD. Muslin keeps exactly two rules per Muslin bridge there,
`-i BR -j ACCEPT` and `-o BR -j ACCEPT`, tagged with the comment `muslin:BR`. They only undo
Docker's blanket DROP for Muslin's bridges; Muslin's own nftables table still enforces its
policy (isolation, --internal) because a drop in any base chain wins.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
from typing import Iterable

from muslin.model.types import IPNetwork

log = logging.getLogger("muslin.docker.hostnet")
CHAIN = "DOCKER-USER"
TAG = "muslin:"


def host_routes() -> list[IPNetwork]:
    """Non-default routes of the main table (IPv4 and IPv6), from /proc."""
    out: list[IPNetwork] = []
    try:
        with open("/proc/net/route") as f:
            next(f, None)
            for line in f:
                p = line.split()
                if len(p) < 8:
                    continue
                dst = int(p[1], 16).to_bytes(4, "little")
                mask = int(p[7], 16).to_bytes(4, "little")
                prefix = bin(int.from_bytes(mask, "big")).count("1")
                if prefix:
                    out.append(ipaddress.ip_network(f"{ipaddress.IPv4Address(dst)}/{prefix}", strict=False))
    except OSError:
        pass
    try:
        with open("/proc/net/ipv6_route") as f:
            for line in f:
                p = line.split()
                prefix = int(p[1], 16)
                if prefix and p[9] != "lo":
                    addr = ipaddress.IPv6Address(bytes.fromhex(p[0]))
                    net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
                    if not net.is_link_local and not net.is_multicast:
                        out.append(net)
    except OSError:
        pass
    return out


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def port_free(proto: str, host_ip: str, port: int) -> bool:
    """Nothing on the host is bound to host_ip:port (tcp/udp; sctp is assumed free)."""
    if proto not in ("tcp", "udp"):
        return True
    fam = socket.AF_INET6 if host_ip and ":" in host_ip else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, kind)
    try:
        s.bind((host_ip or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), port))
        return True
    except OSError as e:
        return e.errno not in (errno.EADDRINUSE, errno.EACCES)
    finally:
        s.close()


def _iptables(binary: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "-w", "5", *args], capture_output=True, text=True, timeout=30)


class DockerUserRules:
    """Keeps `muslin:BR` accept rules in DOCKER-USER equal to the given bridges (when the chain exists)."""

    def __init__(self, binaries: Iterable[str] = ("iptables", "ip6tables")) -> None:
        self.binaries = [b for b in binaries if shutil.which(b)]

    def _ours(self, binary: str) -> list[str] | None:
        r = _iptables(binary, "-t", "filter", "-S", CHAIN)
        if r.returncode != 0:
            return None  # Docker runs without iptables (or is not there): nothing to do
        return [line for line in r.stdout.splitlines() if line.startswith("-A ") and _bridge_of(line)]

    def sync(self, bridges: Iterable[str]) -> None:
        want = sorted(set(bridges))
        for binary in self.binaries:
            ours = self._ours(binary)
            if ours is None:
                continue
            have: dict[str, list[str]] = {}
            for line in ours:
                br = _bridge_of(line)
                have.setdefault(br, []).append(line)
            for br, lines in have.items():
                if br not in want or len(lines) != 2:
                    for line in lines:
                        _iptables(binary, "-t", "filter", "-D", *_split(line)[1:])
                    if br in want:
                        have[br] = []
            for br in want:
                if have.get(br):
                    continue
                for direction in ("-o", "-i"):
                    r = _iptables(binary, "-t", "filter", "-I", CHAIN, "1", direction, br, "-m", "comment",
                                  "--comment", TAG + br, "-j", "ACCEPT")
                    if r.returncode != 0:
                        log.warning("%s: cannot add %s rule for %s: %s", binary, CHAIN, br,
                                    " ".join(r.stderr.split())[:200])

    def remove_all(self) -> None:
        self.sync(())


def _split(line: str) -> list[str]:
    import shlex

    return shlex.split(line)


def _bridge_of(line: str) -> str:
    parts = _split(line)
    for i, p in enumerate(parts):
        if p == "--comment" and i + 1 < len(parts) and parts[i + 1].startswith(TAG):
            return parts[i + 1][len(TAG):]
    return ""

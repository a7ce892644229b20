"""Muslin's accept rules in Docker's DOCKER-USER chain, one pair per Muslin bridge.

Docker (with --iptables=true, its default) sets the filter FORWARD policy to DROP; with
br_netfilter that drops traffic between containers on a Muslin bridge and from Muslin
bridges to the outside. Docker's documented hook for other software is the DOCKER-USER
chain, evaluated first in FORWARD. Muslin keeps exactly two rules per Muslin bridge there,
`-i BR -j ACCEPT` and `-o BR -j ACCEPT`, tagged with the comment `muslin:OWNER:BR` (OWNER:
12 hex digits naming the state dir, so one state dir never removes another's rules), and
nothing else. They only undo Docker's blanket DROP for Muslin's bridges; Muslin's own
nftables table still enforces its policy (isolation, --internal) because a drop in any base
chain wins. Without Docker (no DOCKER-USER chain) nothing is done, and nothing is created.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from typing import Iterable

log = logging.getLogger("muslin.docker_user")
CHAIN = "DOCKER-USER"
TAG = "muslin:"


def _iptables(binary: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "-w", "5", *args], capture_output=True, text=True, timeout=30)


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def _chain_may_exist(binary: str) -> bool:
    """False when DOCKER-USER surely does not exist: iptables-nft keeps it in the nftables
    table `ip filter` (`ip6 filter`), which libnftables lists in-process (~0.5 ms; an
    iptables process costs 5-20 ms). True when that cannot be told (legacy iptables)."""
    from muslin.dataplane import libnft

    real = os.path.realpath(binary)
    if not ("nft" in os.path.basename(real) and libnft.available()):
        return True
    family = "ip6" if "ip6tables" in os.path.basename(binary) else "ip"
    try:
        rc, _out, _err = libnft.run(f"list chain {family} filter {CHAIN}")
    except OSError:
        return True
    return rc == 0


def tag_of(line: str) -> tuple[str, str] | None:
    """(owner, bridge) of one of Muslin's rules in `iptables -S` form; owner '' for the
    older `muslin:BR` tags (taken as anyone's to replace)."""
    parts = shlex.split(line)
    for i, p in enumerate(parts[:-1]):
        if p == "--comment" and parts[i + 1].startswith(TAG):
            rest = parts[i + 1][len(TAG):]
            owner, sep, bridge = rest.partition(":")
            return (owner, bridge) if sep else ("", rest)
    return None


class DockerUserRules:
    def __init__(self, binaries: Iterable[str] = ("iptables", "ip6tables")) -> None:
        self.binaries = [b for b in (_binary(n) for n in binaries) if b]

    def reconcile(self, owner: str, want: Iterable[str], only: Iterable[str] | None = None) -> None:
        """Make `owner`'s rules exactly one pair per bridge in `want`; with `only`, bridges
        outside it are not looked at. Another owner's rules are never touched."""
        want, scope = set(want), (None if only is None else set(only))
        for binary in self.binaries:
            if not _chain_may_exist(binary):
                continue  # no DOCKER-USER: Docker is not there (known without starting iptables)
            r = _iptables(binary, "-t", "filter", "-S", CHAIN)
            if r.returncode != 0:
                continue  # Docker runs without iptables (or is not there): nothing to do
            have: dict[str, list[str]] = {}
            for line in r.stdout.splitlines():
                tag = tag_of(line) if line.startswith("-A ") else None
                if tag and tag[0] in (owner, "") and (scope is None or tag[1] in scope):
                    have.setdefault(tag[1], []).append(line)
            for br, lines in have.items():
                if br not in want or len(lines) != 2 or any(tag_of(x) != (owner, br) for x in lines):
                    for line in lines:
                        _iptables(binary, "-t", "filter", "-D", *shlex.split(line)[1:])
                    have[br] = []
            for br in sorted(want):
                if not have.get(br):
                    self._add(binary, owner, br)

    def _add(self, binary: str, owner: str, bridge: str) -> None:
        for direction in ("-o", "-i"):
            r = _iptables(binary, "-t", "filter", "-I", CHAIN, "1", direction, bridge, "-m", "comment",
                          "--comment", f"{TAG}{owner}:{bridge}", "-j", "ACCEPT")
            if r.returncode != 0:
                log.warning("%s: cannot add %s rule for %s: %s", binary, CHAIN, bridge,
                            " ".join(r.stderr.split())[:200])


def observe(owner: str, binary_name: str = "iptables") -> dict | None:
    """{"bridges": [...]}: the bridges `owner` has an accept pair for in DOCKER-USER; None
    when there is no such chain (Docker is not there, or runs without iptables)."""
    binary = _binary(binary_name)
    if not binary or not _chain_may_exist(binary):
        return None
    r = _iptables(binary, "-t", "filter", "-S", CHAIN)
    if r.returncode != 0:
        return None
    count: dict[str, int] = {}
    for line in r.stdout.splitlines():
        tag = tag_of(line) if line.startswith("-A ") else None
        if tag and tag[0] in (owner, ""):
            count[tag[1]] = count.get(tag[1], 0) + 1
    return {"bridges": sorted(b for b, n in count.items() if n >= 2)}

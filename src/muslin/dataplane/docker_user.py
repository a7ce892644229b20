"""Muslin's accept rules in Docker's DOCKER-USER chain, one pair per Muslin bridge.

Docker (with --iptables=true, its default) sets the filter FORWARD policy to DROP; with
br_netfilter that drops traffic between containers on a Muslin bridge and from Muslin
bridges to the outside. Docker's documented hook for other software is the DOCKER-USER
chain, evaluated first in FORWARD. Muslin keeps exactly two rules per Muslin bridge there,
`-i BR -j ACCEPT` and `-o BR -j ACCEPT`, tagged with the comment `muslin:BR`, and nothing
else. They only undo Docker's blanket DROP for Muslin's bridges; Muslin's own nftables
table still enforces its policy (isolation, --internal) because a drop in any base chain
wins. Without Docker (no DOCKER-USER chain) nothing is done.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Iterable

log = logging.getLogger("muslin.docker_user")
CHAIN = "DOCKER-USER"
TAG = "muslin:"


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

    def ensure(self, bridge: str) -> None:
        """Add this bridge's pair of rules (if the chain exists and they are missing)."""
        for binary in self.binaries:
            ours = self._ours(binary)
            if ours is None or sum(1 for line in ours if _bridge_of(line) == bridge) == 2:
                continue
            for line in ours:
                if _bridge_of(line) == bridge:
                    _iptables(binary, "-t", "filter", "-D", *_split(line)[1:])
            for direction in ("-o", "-i"):
                r = _iptables(binary, "-t", "filter", "-I", CHAIN, "1", direction, bridge, "-m", "comment",
                              "--comment", TAG + bridge, "-j", "ACCEPT")
                if r.returncode != 0:
                    log.warning("%s: cannot add %s rule for %s: %s", binary, CHAIN, bridge,
                                " ".join(r.stderr.split())[:200])

    def remove(self, bridge: str) -> None:
        """Remove this bridge's rules; idempotent."""
        for binary in self.binaries:
            for line in self._ours(binary) or []:
                if _bridge_of(line) == bridge:
                    _iptables(binary, "-t", "filter", "-D", *_split(line)[1:])


def _split(line: str) -> list[str]:
    import shlex

    return shlex.split(line)


def _bridge_of(line: str) -> str:
    parts = _split(line)
    for i, p in enumerate(parts):
        if p == "--comment" and i + 1 < len(parts) and parts[i + 1].startswith(TAG):
            return parts[i + 1][len(TAG):]
    return ""

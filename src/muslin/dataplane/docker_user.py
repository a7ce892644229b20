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
from typing import Callable, Iterable

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

    def _reconcile(self, want: set[str], in_scope: Callable[[str], bool]) -> None:
        """Make the rules of the bridges in scope exactly one pair per bridge in `want`."""
        for binary in self.binaries:
            ours = self._ours(binary)
            if ours is None:
                continue
            have: dict[str, list[str]] = {}
            for line in ours:
                if in_scope(_bridge_of(line)):
                    have.setdefault(_bridge_of(line), []).append(line)
            for br, lines in have.items():
                if br not in want or len(lines) != 2:
                    for line in lines:
                        _iptables(binary, "-t", "filter", "-D", *_split(line)[1:])
                    have[br] = []
            for br in sorted(want):
                if not have.get(br):
                    self._add(binary, br)

    def _add(self, binary: str, bridge: str) -> None:
        for direction in ("-o", "-i"):
            r = _iptables(binary, "-t", "filter", "-I", CHAIN, "1", direction, bridge, "-m", "comment",
                          "--comment", TAG + bridge, "-j", "ACCEPT")
            if r.returncode != 0:
                log.warning("%s: cannot add %s rule for %s: %s", binary, CHAIN, bridge,
                            " ".join(r.stderr.split())[:200])

    def sync(self, bridges: Iterable[str]) -> None:
        """Exactly the given bridges have rules (muslind's periodic check)."""
        self._reconcile(set(bridges), lambda br: True)

    def remove_all(self) -> None:
        self.sync(())

    def ensure(self, bridge: str) -> None:
        """This bridge has its pair of rules (when the chain exists); others untouched."""
        self._reconcile({bridge}, lambda br: br == bridge)

    def remove(self, bridge: str) -> None:
        """This bridge has no rules; idempotent; others untouched."""
        self._reconcile(set(), lambda br: br == bridge)


def _split(line: str) -> list[str]:
    import shlex

    return shlex.split(line)


def _bridge_of(line: str) -> str:
    parts = _split(line)
    for i, p in enumerate(parts):
        if p == "--comment" and i + 1 < len(parts) and parts[i + 1].startswith(TAG):
            return parts[i + 1][len(TAG):]
    return ""

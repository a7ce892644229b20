"""Throwaway namespaces for the benchmarks: random names, batch create/delete, always removed."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def token(n: int = 6) -> str:
    return secrets.token_hex(n // 2)


def run(*cmd: str, input: str | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=input, text=True, capture_output=True, check=check, timeout=timeout)


class Namespaces:
    """Every namespace made through this object is deleted by `cleanup()`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.made: list[str] = []
        self.hosts: list[str] = []

    def make(self, names: list[str]) -> list[str]:
        for i in range(0, len(names), 200):
            chunk = names[i:i + 200]
            self.made.extend(chunk)  # recorded first: a partial batch is still cleaned up
            run("ip", "-batch", "-", input="".join(f"netns add {n}\n" for n in chunk))
        return names

    def host(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        self.make([name])
        self.hosts.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def delete(self, names: list[str]) -> None:
        gone = set(names)
        for i in range(0, len(names), 200):
            chunk = names[i:i + 200]
            run("ip", "-force", "-batch", "-", input="".join(f"netns del {n}\n" for n in chunk), check=False)
        self.made = [n for n in self.made if n not in gone]

    def pids(self, name: str) -> list[int]:
        out = run("ip", "netns", "pids", name, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def cleanup(self) -> None:
        import os
        import signal

        for n in self.hosts:
            for pid in self.pids(n):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.delete(list(self.made))
        self.hosts.clear()


@contextlib.contextmanager
def lab_dir(prefix: str) -> Iterator[Path]:
    """A throwaway MUSLIN_LAB_DIR for the labs a benchmark makes; the old value and no dir after."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    saved = os.environ.get("MUSLIN_LAB_DIR")
    os.environ["MUSLIN_LAB_DIR"] = str(tmp)
    try:
        yield tmp
    finally:
        if saved is None:
            os.environ.pop("MUSLIN_LAB_DIR", None)
        else:
            os.environ["MUSLIN_LAB_DIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)

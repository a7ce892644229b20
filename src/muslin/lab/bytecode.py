"""A bytecode cache for a lab's muslinds when this environment writes none.

With PYTHONDONTWRITEBYTECODE set (or `python -B`) no .pyc file is ever written, so every
muslind a lab starts compiles Muslin's modules again: ~0.4 s of CPU each, about 40% of what
a muslind costs to start (60 hosts: 58 s of CPU in all on this 2-core machine, 34 s with a
cache; docs/benchmarks.md "Scale"). The lab then gives its processes a cache of their own,
<lab dir>/<name>/pycache (PYTHONPYCACHEPREFIX: nothing is written in the source tree or in
site-packages; removed with the lab), filled once by one process before the hosts start.
Without that setting this does nothing: Python's own __pycache__ serves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# What a lab's muslind imports on its way up (the rest is compiled by whoever needs it first).
WARM = ("import compileall, os, muslin; "
        "compileall.compile_dir(os.path.dirname(muslin.__file__), quiet=1); "
        "import muslin.cli.muslind, muslin.control.daemon as d, muslin.control.agent, muslin.store.etcd, "
        "muslin.control.dns_feed, muslin.control.service_members, muslin.control.cluster_names, "
        "muslin.backends.registry; d.warm_up()")


def env(cache: Path, dont_write: bool | None = None) -> dict[str, str] | None:
    """The environment for the lab's Python processes (None: the inherited one will do)."""
    if not (sys.flags.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE")
            if dont_write is None else dont_write):
        return None
    e = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    e["PYTHONPYCACHEPREFIX"] = str(cache)
    return e


def start_warming(cache: Path) -> subprocess.Popen | None:
    """Fill the cache in one process (started while the lab's hosts are made); None: no need."""
    e = env(cache)
    if e is None:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", WARM], env=e, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish_warming(p: subprocess.Popen | None, timeout: float = 60) -> None:
    """Wait for the warming process (a failure only costs the speed-up: the hosts compile)."""
    if p is None:
        return
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()

"""What the lab tests share: the `muslin lab` CLI run as a child, and a lab brought up in a
throwaway MUSLIN_LAB_DIR that is taken down (leaving no namespace) and the old value restored."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from nsutil import suffix

from muslin.lab import core


def lab_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "muslin.lab", *args], capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def lab_up(lab_dir: Path, prefix: str, *up_args: str) -> Iterator[str]:
    """`muslin lab up NAME *up_args` in `lab_dir`; yields NAME; down at the end, whatever happened."""
    old = os.environ.get("MUSLIN_LAB_DIR")
    os.environ["MUSLIN_LAB_DIR"] = str(lab_dir)
    name = prefix + suffix()
    try:
        r = lab_cli("up", name, *up_args)
        assert r.returncode == 0, r.stderr + r.stdout
        yield name
    finally:
        core.down(name)
        assert not [n for n in core.netns_list() if n.startswith(f"mlab-{name}-")]
        if old is None:
            os.environ.pop("MUSLIN_LAB_DIR", None)
        else:
            os.environ["MUSLIN_LAB_DIR"] = old

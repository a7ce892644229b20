"""The native muslin-cni/muslin-ipam (native/muslin-fwd.c) for tests: is it installed, a
fresh build of it, and fake muslind agents that misbehave on purpose."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Callable

import pytest

from nsutil import VENV_BIN

SOURCE = Path(__file__).resolve().parent.parent / "native" / "muslin-fwd.c"


def is_native(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


NATIVE_BUILT = is_native(VENV_BIN / "muslin-cni") and is_native(VENV_BIN / "muslin-ipam")
needs_native = pytest.mark.skipif(
    not NATIVE_BUILT, reason="the native muslin-cni/muslin-ipam is not installed in this venv "
    "(scripts/setup.sh builds native/muslin-fwd.c when a C compiler is there): the Python entry is installed instead")


def build(out: Path, py_dir: Path) -> Path:
    """native/muslin-fwd.c built into `out`, exec'ing `py_dir`/muslin-{cni,ipam}-py; skips
    the test without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler (cc) to build native/muslin-fwd.c")
    subprocess.run([cc, "-O2", "-Wall", "-Werror", f'-DMUSLIN_PY_DIR="{py_dir}"', "-o", str(out), str(SOURCE)],
                   check=True, capture_output=True, text=True)
    return out


class FakeAgent:
    """A Unix socket whose every connection is given to `behave(conn)`, in a thread."""

    def __init__(self, path: Path, behave: Callable[[socket.socket], None]) -> None:
        self.path = str(path)
        self.behave = behave
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self.behave(conn)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                except BaseException as e:  # noqa: BLE001 - reported by the test
                    self.errors.append(e)

    def __enter__(self) -> "FakeAgent":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        Path(self.path).unlink(missing_ok=True)
        if self.errors and not exc[0]:
            raise self.errors[0]

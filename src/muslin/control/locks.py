"""File locks shared by every Muslin process on a host (CNI calls, muslind, CLI).

flock(2) on a file under the state directory: shared for endpoint work on a network,
exclusive to create or remove the network's kernel objects. A thread that already holds
a lock gets it again for free (so a use-case and what it calls take each lock once); asking
for exclusive while holding shared is a programming error, raised instead of deadlocking.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from muslin.model.errors import Unavailable

_held = threading.local()


@contextmanager
def flock(path: Path, exclusive: bool = True) -> Iterator[None]:
    held: dict[str, bool] = getattr(_held, "locks", None) or {}
    _held.locks = held
    key = str(path)
    if key in held:
        if exclusive and not held[key]:
            raise RuntimeError(f"lock {key}: exclusive asked while this thread holds it shared")
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise Unavailable(f"cannot open lock {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        held[key] = exclusive
        try:
            yield
        finally:
            del held[key]
    finally:
        os.close(fd)  # closing releases the lock

"""A lock per network namespace: an abstract Unix socket name, bound by its holder.

Abstract socket names belong to the network namespace, so every Muslin process working in
one host namespace (CNI calls, muslind, the CLI, whatever their state dir) contends for the
same lock, and processes in other namespaces never do. The kernel releases it when the
holder closes it or dies: nothing is left on disk, nothing goes stale after a crash.
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket
import time
from collections.abc import Iterator

from muslin.model.errors import Unavailable


@contextlib.contextmanager
def netns_lock(name: str, timeout: float = 60.0) -> Iterator[None]:
    """Hold the namespace-wide lock `name` (e.g. "nft") for the duration of the block."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    deadline = time.monotonic() + timeout
    delay = 0.0005
    try:
        while True:
            try:
                s.bind(f"\0muslin/{name}")
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise Unavailable(f"lock {name}: {e.strerror}") from None
            if time.monotonic() > deadline:
                raise Unavailable(f"lock {name}: still held by another Muslin process after {timeout:.0f}s")
            time.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, 0.02)
        yield
    finally:
        s.close()

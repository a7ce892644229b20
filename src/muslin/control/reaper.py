"""muslind's reaper: deleting a veth costs a synchronous rcu_barrier (~20 ms) per
RTM_DELLINK message, whatever the number of links in it. So a DEL in muslind only retires
the host end (off the bridge, down, into the reap group: ~0.1 ms) and answers; the reaper
deletes every retired link in one message shortly after, then frees the addresses they held
(until then they belong to `reap/<host ifname>`, so no one else gets them).

The queue is the kernel's own state (the link group), and the held addresses are in the
store: a kill -9 loses nothing; the next muslind reaps both at start.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from muslin.control.service import Muslin

log = logging.getLogger("muslin.reaper")


class Reaper:
    def __init__(self, linger: float = 0.05, interval: float = 10.0) -> None:
        self.linger = linger  # wait this long after a retire for more to come: one delete for a burst
        self.interval = interval
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, Muslin] = {}

    def note(self, m: Muslin) -> None:
        """`m` retired a link (or holds addresses of retired ones): reap soon."""
        with self._lock:
            self._pending[str(m.state_dir)] = m
        self.wake.set()

    def reap_now(self) -> int:
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        freed = 0
        for m in pending:
            try:
                freed += m.reap()  # (the first deletes the links of all of them)
            except Exception as e:  # noqa: BLE001 - retried at the next round
                log.warning("reaping retired links: %s", " ".join(str(e).split()))
                self.note(m)
        return freed

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.wake.wait(self.interval)
            if stop.wait(self.linger):
                break
            self.wake.clear()
            self.reap_now()
        self.reap_now()  # a clean stop leaves nothing retired

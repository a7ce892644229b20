"""Where the time of each operation goes, by phase: the plan runner reports each step's
duration, the use-cases their totals. muslind keeps one `Timings` for the process (answered
on its agent socket as `stats`, for `python -m bench`); without one nothing is measured. Each record is also an
event `phase` (muslin/events.py): muslind's metrics make histograms of the same
measurements (control/metrics.py), nothing is timed twice."""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from muslin import events

KEEP = 2000  # durations kept per phase (the newest)
NFT_PHASE = "nft transaction"  # control/firewall.py times each sync of the table under this phase


class Timings:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._d: dict[str, list[float]] = {}

    def record(self, phase: str, seconds: float, ok: bool = True) -> None:
        if events.LISTENERS:
            events.emit("phase", phase=phase, seconds=seconds, ok=ok)
        with self._lock:
            xs = self._d.setdefault(phase, [])
            xs.append(seconds)
            if len(xs) > KEEP:
                del xs[: len(xs) - KEEP]

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            self.record(phase, time.perf_counter() - t0, ok=False)
            raise
        self.record(phase, time.perf_counter() - t0)

    def snapshot(self, reset: bool = False) -> dict[str, dict[str, float]]:
        """phase -> {n, p50_ms, mean_ms}."""
        with self._lock:
            d, self._d = (self._d, {}) if reset else (dict(self._d), self._d)
        return {k: {"n": len(v), "p50_ms": statistics.median(v) * 1e3, "mean_ms": statistics.fmean(v) * 1e3}
                for k, v in sorted(d.items()) if v}


@contextmanager
def timed(t: Timings | None, phase: str) -> Iterator[None]:
    """`t.timed(phase)`, or nothing when no Timings is kept."""
    if t is None:
        yield
    else:
        with t.timed(phase):
            yield

"""Where the time of each operation goes, by phase: the plan runner reports each step's
duration, the use-cases their totals. muslind keeps one `Timings` for the process (answered
on its agent socket as `stats`, for `python -m bench`); without one nothing is measured."""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager
from typing import Iterator

KEEP = 2000  # durations kept per phase (the newest)


class Timings:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._d: dict[str, list[float]] = {}

    def record(self, phase: str, seconds: float) -> None:
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
        finally:
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

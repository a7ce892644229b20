"""One rollback idiom: a plan is a list of steps, each with its undo; `run` undoes exactly
the steps that ran, newest first, when a later one fails.

Pure: no I/O of its own. A step's `apply` returns a value that its `undo` receives, so an
undo can tell what the step really did (a bridge it created, or one that was there).

Failpoints, for tests on the real kernel: with MUSLIN_FAILPOINTS=name[,name...] in the
environment, `run` fails just before the step of that name (a name may end in '*' to match
a prefix), as if that step had failed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from muslin.model.errors import MuslinError, Unavailable

log = logging.getLogger("muslin.plan")
_NOTHING: Callable[[Any], None] = lambda _result: None  # noqa: E731


@dataclass(frozen=True)
class Step:
    name: str
    apply: Callable[[], Any]
    undo: Callable[[Any], None] = _NOTHING
    phase: str = ""  # what timings group it under ("" = its name); names may carry an interface or address


def failpoint(name: str) -> None:
    """Raise Unavailable when MUSLIN_FAILPOINTS names this step (test facility)."""
    wanted = os.environ.get("MUSLIN_FAILPOINTS")
    if not wanted:
        return
    for w in wanted.split(","):
        w = w.strip()
        if w and (w == name or (w.endswith("*") and name.startswith(w[:-1]))):
            raise Unavailable(f"failpoint {name}: injected failure")


def run(steps: Iterable[Step], timer: Any = None) -> list[Any]:
    """Apply the steps in order; return their results. If one fails, undo the ones that
    completed (newest first) and re-raise its error. An undo that fails is logged and named
    in the error's details; the other undos still run. `timer.record(phase, seconds)`, when
    given, gets each step's duration."""
    done: list[tuple[Step, Any]] = []
    try:
        for step in steps:
            failpoint(step.name)
            if timer is None:
                done.append((step, step.apply()))
                continue
            t0 = time.perf_counter()
            done.append((step, step.apply()))
            timer.record(step.phase or step.name, time.perf_counter() - t0)
    except BaseException as e:
        failed = undo(done)
        if failed and isinstance(e, MuslinError):
            e.details = "; ".join(filter(None, [e.details, f"undo failed for: {', '.join(failed)}"]))
        raise
    return [r for _, r in done]


def undo(done: list[tuple[Step, Any]]) -> list[str]:
    """Undo completed steps newest first; returns the names of those whose undo failed."""
    failed = []
    for step, result in reversed(done):
        try:
            step.undo(result)
        except Exception as ue:  # noqa: BLE001 - keep undoing the rest
            log.warning("undo of step %s failed: %s", step.name, " ".join(str(ue).split()))
            failed.append(step.name)
    return failed

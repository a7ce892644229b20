"""One log format for muslind and the cluster agent: `text` or `json` on stderr.

text: `TIME PROG LEVEL LOGGER: MESSAGE`; when stderr is journald's stream (systemd sets
JOURNAL_STREAM to its device:inode), `<PRIORITY>LOGGER: MESSAGE` instead: journald keeps
the time and reads the priority, so `journalctl -p warning -u muslind` works.
json: one object per line: {"time", "level", "logger", "msg"} (+ "error" with a traceback).
Muslin's own loggers (muslin, muslind) log at `level`, every library's at `third_party`
(a handler filter: pyroute2 resets its logger's level when it is imported).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

OWN_LOGGERS = ("muslind", "muslin")
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class LevelByOwner(logging.Filter):
    def __init__(self, own: int, other: int) -> None:
        super().__init__()
        self.own, self.other = own, other

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".", 1)[0]
        return record.levelno >= (self.own if top in OWN_LOGGERS else self.other)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        doc = {"time": t, "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace("\n", " ")
        return f"<{PRIORITY.get(record.levelno, 6)}>{record.name}: {msg}"


def under_journald(stream=None) -> bool:  # noqa: ANN001
    """Whether `stream` (stderr) is the journal stream systemd connected (JOURNAL_STREAM)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def formatter(fmt: str, prog: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if under_journald():
        return JournalFormatter()
    return logging.Formatter(f"%(asctime)s {prog} %(levelname)s %(name)s: %(message)s")


def setup(level: str = "info", third_party: str = "warning", fmt: str = "text", prog: str = "muslind") -> None:
    own, other = logging.getLevelName(level.upper()), logging.getLevelName(third_party.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, prog))
    handler.addFilter(LevelByOwner(own, other))
    logging.basicConfig(level=min(own, other), handlers=[handler], force=True)


def fatal(message: str, fmt: str = "text") -> None:
    """The last word of a process that stops on an error: `error: MESSAGE`, or a JSON record."""
    line = " ".join(str(message).split())
    if fmt == "json":
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
        print(json.dumps({"time": t, "level": "error", "logger": "muslind", "msg": line}), file=sys.stderr,
              flush=True)
    else:
        print(f"error: {line}", file=sys.stderr, flush=True)

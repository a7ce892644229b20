"""Per-namespace files of iproute2's convention: /etc/netns/NAME/FILE is bind-mounted over
/etc/FILE by `ip netns exec NAME` (so a CLI sandbox sees its own resolv.conf)."""

from __future__ import annotations

import os
from pathlib import Path

ETC_NETNS = Path(os.environ.get("MUSLIN_ETC_NETNS", "/etc/netns"))
MARK = "# muslin"  # first line of the files Muslin writes: it removes only those


def resolv_conf(name: str, text: str | None) -> str | None:
    """Write (atomically) or remove /etc/netns/NAME/resolv.conf; returns the previous text.
    A file Muslin did not write is never changed nor removed (its text is returned)."""
    d = ETC_NETNS / name
    path = d / "resolv.conf"
    try:
        old: str | None = path.read_text()
    except FileNotFoundError:
        old = None
    if text is None:
        if old is not None and old.startswith(MARK):
            path.unlink(missing_ok=True)
            try:
                d.rmdir()  # only when empty: other files are someone else's
            except OSError:
                pass
        return old
    if old is not None and not old.startswith(MARK):
        return old
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / ".resolv.conf.muslin"
    tmp.write_text(text if text.startswith(MARK) else f"{MARK}\n{text}")
    tmp.replace(path)
    return old

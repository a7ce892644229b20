"""`--host-netns`: a short-lived CLI process moves itself into the namespace that plays the
host before it does anything else (never a long-lived process: design principle 6)."""

from __future__ import annotations

import os

from muslin.model.errors import NotFound, Unavailable


def enter(name: str) -> None:
    from muslin.dataplane.nsexec import open_netns, setns

    path = name if name.startswith("/") else f"/run/netns/{name}"
    try:
        fd = open_netns(path, "host namespace")
    except NotFound:
        raise NotFound(f"host namespace {name} does not exist") from None
    try:
        setns(fd)
    except OSError as e:
        raise Unavailable(f"cannot enter host namespace {name}: {e.strerror}") from None
    finally:
        os.close(fd)

"""A private Docker engine with muslind as its plugin, and a Podman whose muslin-cni hands its
requests to that same muslind (one store): the two worlds the mixed tests put on one network.
Held under root_ns_lock for the whole time; everything removed at the end."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from docker_util import DockerEnv, running_docker
from nsutil import tool
from podman_util import Podman


@contextlib.contextmanager
def docker_and_podman(tmp_path: Path, prefix: str) -> Iterator[tuple[DockerEnv, Podman]]:
    with running_docker() as dk:
        plugins = tmp_path / "plugins"
        plugins.mkdir()
        (plugins / "muslin-cni").symlink_to(tool("muslin-cni"))
        base = Path(tempfile.mkdtemp(prefix=prefix))
        # The plugin hands its requests to muslind (the fast path) — same store as Docker's.
        pm = Podman(base, [str(plugins), "/usr/lib/cni"],
                    env={"MUSLIN_AGENT_SOCKET": dk.agent_sock, "MUSLIN_STATE_DIR": str(dk.state)})
        try:
            yield dk, pm
        finally:
            pm.destroy()

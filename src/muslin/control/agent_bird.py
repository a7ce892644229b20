"""BIRD 2 for the agent's bgp backend (companion "bird"): one bird per (host, network),
config rendered by the backend, written by the agent and loaded with `birdc configure`.
Stopping the agent leaves bird running (routes stay); a bird that died is started again
at the next tick; leaving stops it by the PID in its pidfile."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

from muslin.model.errors import Invalid, Unavailable, Unsupported


class Bird:
    def __init__(self, state_dir: Path, network: str, log: Callable[[str], None],
                 options: Mapping[str, Any] | None = None) -> None:
        self.dir = Path(state_dir) / "cluster"
        self.conf = self.dir / f"{network}.bird.conf"
        self.sock = self.dir / f"{network}.bird.ctl"
        self.pidfile = self.dir / f"{network}.bird.pid"
        self.bird_log = self.dir / f"{network}.bird.log"
        self.log = log
        self.applied = ""

    @staticmethod
    def probe() -> str:
        if shutil.which("bird") is None or shutil.which("birdc") is None:
            raise Unsupported("bgp backend: BIRD 2 is not installed (apt-get install bird2)")
        return "bird"

    def facts(self, create: bool = True) -> dict[str, str]:
        return {"bird_log": str(self.bird_log)}

    def tick(self) -> bool:
        """True when a bird we configured is gone (it is started again by the reconcile)."""
        if self.applied and not self.pid():
            self.log("bird is not running; starting it again")
            self.applied = ""
            return True
        return False

    def status(self) -> dict[str, Any]:
        return {"pid": self.pid()}

    def pid(self) -> int:
        try:
            pid = int(self.pidfile.read_text().strip())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return 0
        return pid if b"bird" in cmd and str(self.conf).encode() in cmd else 0

    def ensure(self, config: str) -> None:
        self.probe()
        running = self.pid()
        current = self.conf.read_text() if self.conf.exists() else ""
        if running and config == current and self.applied == config:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.conf.with_suffix(".new")
        tmp.write_text(config)
        chk = subprocess.run(["bird", "-p", "-c", str(tmp)], capture_output=True, text=True)
        if chk.returncode != 0:
            raise Invalid(f"bgp backend: BIRD rejected the generated config: {(chk.stderr or chk.stdout).strip()}")
        tmp.replace(self.conf)
        if not running:
            self.sock.unlink(missing_ok=True)
            r = subprocess.run(["bird", "-c", str(self.conf), "-s", str(self.sock), "-P", str(self.pidfile)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise Unavailable(f"bgp backend: bird did not start: {(r.stderr or r.stdout).strip()}")
            self.log(f"started bird (pid {self._wait_pid()})")
        elif config != current or not self.applied:
            r = subprocess.run(["birdc", "-s", str(self.sock), "configure"], capture_output=True, text=True)
            if r.returncode != 0 or "error" in r.stdout.lower():
                raise Unavailable(f"bgp backend: birdc configure failed: {(r.stdout + r.stderr).strip()}")
            if config != current:
                self.log("bird reconfigured")
        self.applied = config

    def _wait_pid(self) -> int:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            pid = self.pid()
            if pid:
                return pid
            time.sleep(0.05)
        return 0

    def protocols(self) -> str:
        r = subprocess.run(["birdc", "-s", str(self.sock), "show", "protocols"], capture_output=True, text=True)
        return r.stdout

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + 5
            while time.monotonic() < end and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
        for p in (self.pidfile, self.sock, self.conf, self.bird_log):
            p.unlink(missing_ok=True)

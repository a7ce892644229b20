"""`muslin demo up|down`: a network and two sandboxes you can see and ping.

Everything lives in a namespace that plays the host (muslin-demo-XXXX); nothing is
made in the machine's own namespace. `muslin demo down` removes all of it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import click

from muslin.model.errors import Conflict, Unavailable

RECORD = Path(os.environ.get("MUSLIN_DEMO_RECORD", "/run/muslin/demo.json"))
SUBNET = "10.88.0.0/24"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise Unavailable(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip()}")
    return r


def _exe() -> str:
    exe = str(Path(sys.argv[0]).absolute().parent / "muslin")
    return exe if os.path.exists(exe) else (shutil.which("muslin") or "muslin")


def _muslin(host: str, state: str, *args: str) -> str:
    return _run(_exe(), "--host-netns", host, "--state-dir", state, *args).stdout


@click.group()
def demo() -> None:
    """A demo network with two sandboxes that ping each other."""


@demo.command("up")
def demo_up() -> None:
    """Create the demo: host namespace, network, two sandboxes; ping."""
    from rich.console import Console

    con = Console()
    if RECORD.exists():
        raise Conflict(f"a demo is already up ({json.loads(RECORD.read_text())['host']}); run: muslin demo down")
    tag = secrets.token_hex(2)
    host, a, b = f"muslin-demo-{tag}", f"demo-a-{tag}", f"demo-b-{tag}"
    state = f"/run/muslin/demo-{tag}"
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps({"host": host, "state": state, "sandboxes": [a, b]}))
    with con.status("building the demo...") as status:
        status.update(f"host namespace {host}")
        _run("ip", "netns", "add", host)
        _run("ip", "-n", host, "link", "set", "lo", "up")
        status.update("network demo")
        _muslin(host, state, "network", "create", "demo", "--subnet", SUBNET)
        addrs = {}
        for s in (a, b):
            status.update(f"sandbox {s}")
            _muslin(host, state, "sandbox", "create", s)
            ep = json.loads(_muslin(host, state, "connect", "demo", s, "-o", "json"))
            addrs[s] = ep["addresses"][0].split("/")[0]
    con.print(f"[bold]host namespace[/] {host}   [bold]network[/] demo {SUBNET} on bridge mus-demo")
    con.print(_muslin(host, state, "sandbox", "ls"))
    con.print(f"[bold]ping from {a} to {b} ({addrs[b]}):[/]")
    r = _run("ip", "netns", "exec", a, "ping", "-c", "3", "-i", "0.2", addrs[b], check=False)
    con.print(r.stdout.strip())
    if r.returncode != 0:
        raise Unavailable(f"the demo sandboxes cannot reach each other: {r.stdout.strip().splitlines()[-1:]}")
    con.print("\n[bold]Try it yourself:[/]")
    con.print(f"  ip netns exec {b} ping -c 2 {addrs[a]}")
    con.print(f"  {_exe()} --host-netns {host} --state-dir {state} network inspect demo", soft_wrap=True)
    con.print(f"  ip -n {host} link show master mus-demo")
    con.print(f"[bold]Clean up:[/] {_exe()} demo down", soft_wrap=True)


@demo.command("down")
def demo_down() -> None:
    """Remove everything the demo made (idempotent)."""
    if not RECORD.exists():
        click.echo("no demo is up")
        return
    rec = json.loads(RECORD.read_text())
    host, state = rec["host"], rec["state"]
    if os.path.exists(f"/run/netns/{host}"):
        for s in rec["sandboxes"]:
            _muslin(host, state, "sandbox", "rm", s)
        _muslin(host, state, "network", "rm", "--force", "demo")
        _run("ip", "netns", "del", host, check=False)
    for s in rec["sandboxes"]:
        _run("ip", "netns", "del", s, check=False)
    shutil.rmtree(state, ignore_errors=True)
    RECORD.unlink(missing_ok=True)
    click.echo(f"removed {host} and its sandboxes")

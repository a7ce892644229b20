"""Command line of the multi-host agent: `python -m muslin.control.agent ...`.

Every command prints one clear line on error (exit status from the error taxonomy)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import click

from muslin.cli.guard import one_line_errors

from muslin.backends.model import DEFAULT_SUBNET_TTL
from muslin.model.errors import NotFound

STORE_HELP = "cluster store URL, e.g. etcd://10.0.0.1:2379"


def _store(url: str):
    from muslin.store import open_store
    return open_store(url)


def _state(d: str | None) -> Path:
    from muslin.store import default_state_dir
    return Path(d) if d else default_state_dir()


@click.group()
def cli() -> None:
    """Muslin multi-host agent."""


@cli.command()
@click.option("--store", "store_url", required=True, help=STORE_HELP)
@click.option("--network", required=True)
@click.option("--cidr", default="10.244.0.0/16", show_default=True)
@click.option("--host-prefix", default=24, show_default=True)
@click.option("--backend", default="vxlan", show_default=True)
@click.option("--vni", default=1, show_default=True)
@click.option("--port", default=4789, show_default=True)
@click.option("--asn", default=64512, show_default=True)
@click.option("--route-reflector", "rrs", multiple=True, help="hostname of a BGP route reflector (repeatable)")
@click.option("--lease-ttl", default=30, show_default=True,
              help="seconds: TTL of an agent's liveness key (health only, never routing)")
@click.option("--subnet-ttl", default=DEFAULT_SUBNET_TTL, show_default=True,
              help="seconds: TTL of a host's subnet lease (renewed; peers drop a host when it expires)")
@click.option("--mtu", default=0)
@one_line_errors
def init(store_url: str, network: str, cidr: str, host_prefix: int, backend: str, vni: int, port: int,
         asn: int, rrs: tuple[str, ...], lease_ttl: int, subnet_ttl: int, mtu: int) -> None:
    """Store a cluster network's config (cluster/<net>/config)."""
    from muslin.backends.model import ClusterConfig
    from muslin.control.agent import init_config
    cfg = ClusterConfig(network, cidr, host_prefix, backend, vni, port, asn, rrs, lease_ttl=lease_ttl, mtu=mtu,
                        subnet_ttl=subnet_ttl).validate()
    init_config(_store(store_url), cfg)
    click.echo(json.dumps(cfg.to_dict()))


@cli.command()
@click.option("--store", "store_url", required=True, help=STORE_HELP)
@click.option("--network", required=True)
@click.option("--hostname", default=lambda: socket.gethostname())
@click.option("--state-dir", default=None)
@click.option("--underlay-dev", default="")
@click.option("--underlay-ip", default="")
@click.option("--resync", default=10.0, show_default=True, help="seconds between full resyncs")
@click.option("--leave", "leave_on_stop", is_flag=True, help="give the subnet back on SIGTERM/SIGINT")
@one_line_errors
def run(store_url: str, network: str, hostname: str, state_dir: str | None, underlay_dev: str,
        underlay_ip: str, resync: float, leave_on_stop: bool) -> None:
    """Join a cluster network and keep this host's kernel in line with it."""
    from muslin.control.agent import Agent
    sd = _state(state_dir)
    os.environ["MUSLIN_STATE_DIR"] = str(sd)
    agent = Agent(_store(store_url), network, hostname, sd, underlay_dev, underlay_ip, resync)
    agent.leave_on_stop = leave_on_stop
    stop = threading.Event()

    def on_term(signum, frame):  # noqa: ANN001
        stop.set()

    def on_leave(signum, frame):  # noqa: ANN001
        agent.leave_on_stop = True
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGUSR1, on_leave)
    pidfile = sd / "cluster" / f"{network}.agent.pid"
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(str(os.getpid()))
    try:
        agent.run(stop)
    finally:
        agent.store.close()
        pidfile.unlink(missing_ok=True)


@cli.command()
@click.option("--store", "store_url", required=True, help=STORE_HELP)
@click.option("--network", required=True)
@click.option("--hostname", default=lambda: socket.gethostname())
@click.option("--state-dir", default=None)
@one_line_errors
def leave(store_url: str, network: str, hostname: str, state_dir: str | None) -> None:
    """Leave a cluster network: stop the running agent (it gives everything back) or do it here."""
    sd = _state(state_dir)
    pidfile = sd / "cluster" / f"{network}.agent.pid"
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGUSR1)
        end = time.monotonic() + 15
        while time.monotonic() < end and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        click.echo(f"agent {pid} left {network}")
        return
    except (OSError, ValueError):
        pass
    from muslin.control.agent import Agent
    os.environ["MUSLIN_STATE_DIR"] = str(sd)
    a = Agent(_store(store_url), network, hostname, sd)
    a.leave()
    click.echo(f"{hostname} left {network}")


@cli.command()
@click.option("--state-dir", default=None)
@click.option("--network", required=True)
@click.option("--id", "sandbox", required=True, help="sandbox name (the endpoint id)")
@click.option("--netns", required=True, help="path of the sandbox's network namespace")
@click.option("--alias", "aliases", multiple=True, help="another DNS name of the sandbox (repeatable)")
@one_line_errors
def attach(state_dir: str | None, network: str, sandbox: str, netns: str, aliases: tuple[str, ...]) -> None:
    """Attach a sandbox to this host's side of a cluster network; prints its address."""
    from muslin.control.service import Muslin
    from muslin.model.types import AttachRequest
    sd = _state(state_dir)
    os.environ["MUSLIN_STATE_DIR"] = str(sd)
    m = Muslin(state_dir=sd)
    try:
        if m.find_network(network) is None:
            raise NotFound(f"network {network!r} is not set up on this host (is its agent running?)")
        from muslin.model.names import check_dns_name, is_dns_name
        for a in aliases:
            check_dns_name(a, "--alias")
        ep = m.attach(AttachRequest(network=network, endpoint_id=sandbox, container_id=sandbox, netns=netns,
                                    name=sandbox if is_dns_name(sandbox) else "", aliases=aliases))
    finally:
        m.close()
    click.echo(json.dumps({"address": str(ep.addresses[0]), "mac": ep.mac, "mtu": ep.mtu}))


@cli.command()
@click.option("--state-dir", default=None)
@click.option("--network", required=True)
@click.option("--id", "sandbox", required=True)
@one_line_errors
def detach(state_dir: str | None, network: str, sandbox: str) -> None:
    """Detach a sandbox (idempotent)."""
    from muslin.control.service import Muslin
    sd = _state(state_dir)
    os.environ["MUSLIN_STATE_DIR"] = str(sd)
    m = Muslin(state_dir=sd)
    try:
        m.detach(network, sandbox)
    finally:
        m.close()


@cli.command()
@click.option("--store", "store_url", required=True, help=STORE_HELP)
@click.option("--network", required=True)
@one_line_errors
def hosts(store_url: str, network: str) -> None:
    """The hosts of a cluster network, their subnet leases and whether their agent is alive, as JSON."""
    from muslin.control.agent import list_alive, list_hosts, read_config
    st = _store(store_url)
    cfg = read_config(st, network)
    alive = list_alive(st, network)
    out = {"config": cfg.to_dict(),
           "hosts": {h: {**rec.to_dict(), "lease": lease, "alive": h in alive}
                     for h, (rec, lease) in list_hosts(st, network).items()}}
    click.echo(json.dumps(out))


def main() -> None:
    cli(prog_name="muslin-agent")

"""`muslin cluster ...`: a cluster network's config, its status and hosts from the store, and
this host's agent (`python -m muslin.control.agent ...` is the same command group).

The store and how to reach it come from `--store URL` (etcd://h1:2379,h2:2379 or etcds://
for TLS), the etcd flags of muslind (--etcd-ca/--etcd-cert/--etcd-key/--etcd-user/
--etcd-password-file), their MUSLIN_* variables, or the keys of muslind's config file
(`cluster-store`, `cluster-network`, `etcd-*`, `state-dir`, `hostname`), so on a host that
runs muslind `muslin cluster status` needs no flag. Every command prints one clear line on
error (exit status from the error taxonomy); `status` exits 7 when anything is degraded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import click

from muslin.backends.model import DEFAULT_SUBNET_TTL, ClusterConfig
from muslin.backends.registry import names as backend_names
from muslin.cli.guard import key_values, one_line_errors, run, version_option
from muslin.cli.muslind import load_config, setting_options
from muslin.cli.output import OUTPUT, emit_list, emit_one, list_options, table
from muslin.control.settings import DAEMON, DEFAULT_CONFIG, ETCD, LOGGING
from muslin.model.errors import Invalid, NotFound, Unavailable


def store_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = setting_options(ETCD)(f)
    return click.option("--store", "--cluster-store", "cluster_store", default="", envvar="MUSLIN_CLUSTER_STORE",
                        show_envvar=True, metavar="URL",
                        help="cluster store: etcd://h1:2379[,h2:2379] or etcds://... (TLS)")(f)


def network_option(required: bool = True, help: str = "the cluster network") -> Callable[..., Any]:
    return click.option("--network", "--cluster-network", "cluster_network", default="", required=False,
                        envvar="MUSLIN_CLUSTER_NETWORK", show_envvar=True, metavar="NAME",
                        help=help + ("" if not required else " (required)"))


def state_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--state-dir", "state_dir", default=None, envvar="MUSLIN_STATE_DIR", metavar="PATH",
                        help="this host's state directory (default /var/lib/muslin)")(f)


def hostname_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--hostname", default=lambda: socket.gethostname(), envvar="MUSLIN_HOSTNAME",
                        metavar="NAME", help="this host's name in the cluster (default: the host name)")(f)


def open_cluster_store(kw: dict[str, Any]):  # type: ignore[no-untyped-def]
    from muslin.control.settings import etcd_options
    from muslin.store import open_store

    url = kw.get("cluster_store") or ""
    if not url:
        raise Invalid(f"no cluster store: give --store URL (or MUSLIN_CLUSTER_STORE, or cluster-store in "
                      f"{DEFAULT_CONFIG})")
    return open_store(url, etcd_options(SimpleNamespace(**{s.dest: kw.get(s.dest, "") for s in ETCD})))


def need_network(kw: dict[str, Any]) -> str:
    n = kw.get("cluster_network") or ""
    if not n:
        raise Invalid("no cluster network: give --network NAME (or MUSLIN_CLUSTER_NETWORK, or cluster-network "
                      f"in {DEFAULT_CONFIG})")
    return n


def _state(d: str | None) -> Path:
    from muslin.store import default_state_dir

    if not d:  # `muslin --state-dir X cluster ...`
        d = click.get_current_context().find_root().params.get("state_dir")
    return Path(d) if d else default_state_dir()


def _load(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """--config: muslind's config file gives the defaults of every subcommand."""
    path = value if value is not None else DEFAULT_CONFIG
    values = load_config(path, DAEMON, value is not None)
    group = ctx.command
    ctx.default_map = {name: dict(values) for name in getattr(group, "commands", {})}
    return path


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@version_option()
@click.option("--config", default=None, envvar="MUSLIN_CONFIG", is_eager=True, expose_value=False, callback=_load,
              metavar="FILE", help=f"muslind's config file (default {DEFAULT_CONFIG} if it exists; '' for none)")
def cli() -> None:
    """Cluster networks: one config in the store, one agent per host (in muslind)."""


@cli.command()
@store_options
@network_option()
@click.option("--cidr", default="10.244.0.0/16", show_default=True, help="the cluster CIDR")
@click.option("--host-prefix", default=24, show_default=True, help="prefix length of each host's subnet")
@click.option("--cidr6", default="", help="dual-stack: the IPv6 cluster CIDR next to the IPv4 --cidr (an "
              "IPv6-only network gives its IPv6 CIDR as --cidr)")
@click.option("--host-prefix6", default=64, show_default=True, help="prefix length of each host's IPv6 subnet")
@click.option("--backend", default="vxlan", show_default=True, help=" | ".join(backend_names()))
@click.option("--vni", default=1, show_default=True, help="vxlan: the VNI")
@click.option("--port", default=4789, show_default=True, help="vxlan: the UDP port")
@click.option("--asn", default=64512, show_default=True, help="bgp: the AS number")
@click.option("--route-reflector", "rrs", multiple=True, help="bgp: hostname of a route reflector (repeatable)")
@click.option("--lease-ttl", default=ClusterConfig.lease_ttl, show_default=True,
              help="seconds: TTL of an agent's liveness key (health only, never routing)")
@click.option("--subnet-ttl", default=DEFAULT_SUBNET_TTL, show_default=True,
              help="seconds: TTL of a host's subnet lease (renewed; peers drop a host when it expires)")
@click.option("--mtu", default=0, help="MTU of the cluster network (default: the underlay's, less the overhead)")
@click.option("--option", "opts", multiple=True, metavar="KEY=VALUE",
              help="a backend option (wireguard: port, strict, keepalive, rotate_every), repeatable")
@OUTPUT
@one_line_errors
def init(cidr: str, host_prefix: int, cidr6: str, host_prefix6: int, backend: str, vni: int, port: int, asn: int,
         rrs: tuple[str, ...],
         lease_ttl: int, subnet_ttl: int, mtu: int, opts: tuple[str, ...], output: str, **kw: Any) -> None:
    """Store a cluster network's config (the same again is fine)."""
    from muslin.backends.model import ClusterConfig
    from muslin.control.agent import init_config

    cfg = ClusterConfig(need_network(kw), cidr, host_prefix, backend, vni, port, asn, rrs, lease_ttl=lease_ttl,
                        mtu=mtu, subnet_ttl=subnet_ttl, options=key_values(opts, "--option"), cidr6=cidr6,
                        host_prefix6=host_prefix6).validate()
    st = open_cluster_store(kw)
    try:
        init_config(st, cfg)
    finally:
        st.close()
    emit_one(cfg.to_dict(), output, "", lambda: click.echo(
        f"cluster network {cfg.network}: {cfg.backend}, {cfg.cidr} (/{cfg.host_prefix} per host)"
        + (f" and {cfg.cidr6} (/{cfg.host_prefix6} per host)" if cfg.cidr6 else "")
        + f", liveness TTL {cfg.lease_ttl} s, subnet lease {cfg.subnet_ttl} s"))


def _status_view(s: dict[str, Any]) -> None:
    for m in s["store"]:
        state = f"ok ({m.get('version', '')}{', leader' if m.get('leader') else ''})" if m["ok"] else \
            f"DOWN ({m.get('error', '')})"
        click.echo(f"etcd {m['endpoint']}: {state}")
    if not s["networks"]:
        click.echo("no cluster network in the store (muslin cluster init)")
    for name, n in s["networks"].items():
        c = n["config"]
        table(["HOST", "HEALTH", "SUBNET", "UNDERLAY", "LEASE", "LEFT", "AGENT", "PEERS"],
              [[h, "ok" if d["healthy"] else "degraded", " ".join(x for x in (d["subnet"], d.get("subnet6")) if x) or "-",
                d["underlay"] or "-", d["lease"] or "-",
                "-" if d["lease_left"] is None else f"{d['lease_left']}s",
                f"pid {d['agent'].get('pid', '?')}" if d["alive"] else "down", ",".join(d["peers"]) or "-"]
               for h, d in n["hosts"].items()],
              title=f"cluster network {name}: {c['backend']}, {c['cidr']} (/{c['host_prefix']} per host), "
                    + (f"{c['cidr6']} (/{c['host_prefix6']} per host), " if c.get("cidr6") else "") +
                    f"liveness TTL {c['lease_ttl']} s, subnet lease {c['subnet_ttl']} s, "
                    f"{len(n['hosts'])} hosts")
        for h, d in n["hosts"].items():
            for r in d["reasons"]:
                click.echo(f"  {h}: {r}")


@cli.command()
@store_options
@network_option(required=False, help="only this cluster network (default: every one in the store)")
@state_option
@OUTPUT
@one_line_errors
def status(state_dir: str | None, output: str, **kw: Any) -> None:
    """Health, subnet leases and peers of each host.

    Per cluster network (or only --network), each host's health (its agent's liveness key),
    subnet lease and the time it has left, and peers; the etcd members. Exit 7 when
    anything is degraded."""
    from muslin.control import cluster

    st = open_cluster_store(kw)
    try:
        s = cluster.status(st, kw.get("cluster_network") or "", _state(state_dir))
    finally:
        st.close()
    emit_one(s, output, "", lambda: _status_view(s))
    bad = cluster.degraded(s)
    if bad:
        raise Unavailable(bad)


@cli.command()
@store_options
@network_option()
@list_options
@one_line_errors
def hosts(output: str, quiet: bool, template: str, **kw: Any) -> None:
    """List a cluster network's hosts (subnet, underlay, lease, agent)."""
    from muslin.control import cluster

    st = open_cluster_store(kw)
    try:
        n = cluster.network_status(st, need_network(kw))
    finally:
        st.close()
    items = [{"name": h, **{k: d[k] for k in ("subnet", "underlay", "lease", "lease_left", "alive", "healthy")}}
             for h, d in n["hosts"].items()]
    emit_list(items, output, quiet, template, ["HOST", "SUBNET", "UNDERLAY", "LEASE", "ALIVE"],
              lambda i: [i["name"], i["subnet"] or "-", i["underlay"] or "-", i["lease"] or "-",
                         "yes" if i["alive"] else "no"])


@cli.command()
@store_options
@network_option()
@hostname_option
@state_option
@one_line_errors
def leave(hostname: str, state_dir: str | None, **kw: Any) -> None:
    """Leave a cluster network (this host).

    Tells this host's running agent (it gives its subnet back and removes what it made), or
    does it here when none runs."""
    network = need_network(kw)
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
    a = Agent(open_cluster_store(kw), network, hostname, sd)
    a.leave()
    click.echo(f"{hostname} left {network}")


@cli.command("run", hidden=True)
@store_options
@network_option()
@hostname_option
@state_option
@click.option("--underlay-dev", default="")
@click.option("--underlay-ip", default="")
@click.option("--underlay-ip6", default="", help="the IPv6 underlay address [default: the underlay device's first "
              "global IPv6 address] (dual-stack and IPv6 networks)")
@click.option("--resync", default=10.0, show_default=True, help="seconds between full resyncs")
@click.option("--leave", "leave_on_stop", is_flag=True, help="give the subnet back on SIGTERM/SIGINT")
@setting_options(LOGGING)
@one_line_errors
def run_agent(hostname: str, state_dir: str | None, underlay_dev: str, underlay_ip: str, underlay_ip6: str,
              resync: float,
              leave_on_stop: bool, log_level: str, third_party_log_level: str, log_format: str, **kw: Any) -> None:
    """Run this host's agent in the foreground, without muslind (muslind runs it as a service)."""
    import logging

    from muslin.cli import logs
    from muslin.control.agent import Agent

    logs.setup(log_level, third_party_log_level, log_format, "muslin-cluster")
    sd = _state(state_dir)
    os.environ["MUSLIN_STATE_DIR"] = str(sd)
    network = need_network(kw)
    agent = Agent(open_cluster_store(kw), network, hostname, sd, underlay_dev, underlay_ip, resync,
                  log=logging.getLogger("muslin.agent").info, underlay_ip6=underlay_ip6)
    agent.leave_on_stop = leave_on_stop
    stop = threading.Event()

    def on_leave(signum, frame):  # noqa: ANN001
        agent.leave_on_stop = True
        stop.set()

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, on_leave)
    pidfile = sd / "cluster" / f"{network}.agent.pid"
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(str(os.getpid()))
    try:
        agent.run(stop)
    finally:
        agent.store.close()
        pidfile.unlink(missing_ok=True)



@cli.command(hidden=True)
@state_option
@network_option()
@click.option("--id", "sandbox", required=True, help="sandbox name (the endpoint id)")
@click.option("--netns", required=True, help="path of the sandbox's network namespace")
@click.option("--alias", "aliases", multiple=True, help="another DNS name of the sandbox (repeatable)")
@click.option("--label", "labels", multiple=True, help="a label KEY=VALUE (repeatable)")
@click.option("--namespace", default="default", help="the sandbox's namespace (network policy)")
@click.option("--expose", multiple=True, help="a named port NAME=PORT[/PROTO] (repeatable)")
@one_line_errors
def attach(state_dir: str | None, sandbox: str, netns: str, aliases: tuple[str, ...], labels: tuple[str, ...],
           namespace: str, expose: tuple[str, ...], **kw: Any) -> None:
    """Attach a sandbox to this host's side of a cluster network; prints its address (muslin lab)."""
    from muslin.control.service import Muslin
    from muslin.model.types import AttachRequest

    network = need_network(kw)
    sd = _state(state_dir)
    os.environ["MUSLIN_STATE_DIR"] = str(sd)
    m = Muslin(state_dir=sd)
    try:
        if m.find_network(network) is None:
            raise NotFound(f"network {network!r} is not set up on this host (is its agent running?)")
        from muslin.control.sandboxes import check_exposed
        from muslin.model.names import check_dns_name, check_namespace, is_dns_name, parse_label_changes
        from muslin.model.types import NamedPort
        for a in aliases:
            check_dns_name(a, "--alias")
        sets, _ = parse_label_changes(labels, "--label")
        exposed = [NamedPort.parse(e) for e in expose]
        ep = m.attach(AttachRequest(network=network, endpoint_id=sandbox, container_id=sandbox, netns=netns,
                                    name=sandbox if is_dns_name(sandbox) else "", aliases=aliases,
                                    labels=tuple(sorted(sets.items())), namespace=check_namespace(namespace),
                                    exposed=check_exposed(tuple(exposed))))
    finally:
        m.close()
    v6 = [str(a) for a in ep.addresses if a.version == 6]
    click.echo(json.dumps({"address": str(ep.addresses[0]), "address6": v6[0] if v6 else "", "mac": ep.mac,
                           "mtu": ep.mtu}))


@cli.command(hidden=True)
@state_option
@network_option()
@click.option("--id", "sandbox", required=True, help="sandbox name (the endpoint id)")
@click.argument("changes", nargs=-1, required=True)
@one_line_errors
def label(state_dir: str | None, sandbox: str, changes: tuple[str, ...], **kw: Any) -> None:
    """Set (KEY=VALUE) or remove (KEY-) labels of an attached sandbox (muslin lab)."""
    from muslin.control.service import Muslin
    from muslin.model.names import parse_label_changes

    sets, drops = parse_label_changes(changes)
    sd = _state(state_dir)
    os.environ["MUSLIN_STATE_DIR"] = str(sd)
    m = Muslin(state_dir=sd)
    try:
        ep = m.set_identity(need_network(kw), sandbox, set_labels=sets, drop_labels=drops)
    finally:
        m.close()
    click.echo(" ".join(f"{k}={v}" for k, v in ep.labels))


@cli.command(hidden=True)
@state_option
@network_option()
@click.option("--id", "sandbox", required=True)
@one_line_errors
def detach(state_dir: str | None, sandbox: str, **kw: Any) -> None:
    """Detach a sandbox (idempotent; muslin lab)."""
    from muslin.control.service import Muslin

    sd = _state(state_dir)
    os.environ["MUSLIN_STATE_DIR"] = str(sd)
    m = Muslin(state_dir=sd)
    try:
        m.detach(need_network(kw), sandbox)
    finally:
        m.close()


@cli.command("rotate-key")
@state_option
@one_line_errors
def rotate_key(state_dir: str | None) -> None:
    """Give this host a new WireGuard key pair; its running agents publish it within a second."""
    from muslin.control.agent import rotate_key as rotate

    click.echo(json.dumps({"public_key": rotate(_state(state_dir))}))


def main(argv: list[str] | None = None) -> None:
    run(cli, argv, prog_name="muslin cluster")


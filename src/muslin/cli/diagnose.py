"""`muslin doctor` and `muslin topology`: this host as Muslin sees it.

Both read this state dir's store and, with a cluster store (--store, MUSLIN_CLUSTER_STORE or
`cluster-store` of muslind's config file, with the same etcd options as `muslin cluster`),
the cluster networks in it."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from muslin.cli.muslind import config_option
from muslin.control.agent_cli import network_option, store_options
from muslin.control.settings import DAEMON

DEGRADED = 7  # the exit status of `muslin cluster status` when degraded, and of a failed doctor


def _muslin(ctx: click.Context) -> Any:
    return ctx.find_root().obj.muslin


def _hostname(kw: dict[str, Any]) -> str:
    import socket

    h = kw.get("hostname") or socket.gethostname()
    return h() if callable(h) else h


def _cluster_store(kw: dict[str, Any]) -> Any:
    from muslin.control.agent_cli import open_cluster_store

    return open_cluster_store(kw) if kw.get("cluster_store") else None


def common(f: Any) -> Any:
    f = store_options(f)
    f = network_option(required=False, help="only this cluster network")(f)
    f = click.option("--hostname", default="", envvar="MUSLIN_HOSTNAME", metavar="NAME",
                     help="this host's name in the cluster (default: its agent's, else the host name)")(f)
    return config_option(DAEMON)(f)


@click.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@common
@click.pass_context
def doctor(ctx: click.Context, output: str, config: str, **kw: Any) -> None:
    """Check this host: the firewall table against the desired state, forwarding, bridge
    netfilter, rp_filter, MTUs, bridges and their ports, orphans, the DEL reaper's queue, the
    store, conntrack, kernel features; with a cluster store also etcd, this host's leases and
    each peer's route, FDB and neighbour entries. Each failure says what to run to fix it.
    Exit status 0 when every check holds, 7 when one fails."""
    from muslin.control import doctor as D
    from muslin.control import doctor_facts

    store = _cluster_store(kw)
    try:
        facts = doctor_facts.gather(_muslin(ctx), store, [kw["cluster_network"]] if kw.get("cluster_network")
                                    else None, _hostname(kw))
    finally:
        if store is not None:
            store.close()
    results = D.run(facts)
    ok = D.healthy(results)
    if output == "json":
        click.echo(json.dumps({"healthy": ok, "state_dir": facts.state_dir,
                               "checks": [r.to_dict() for r in results]}, indent=1))
    else:
        marks = {"ok": "ok", "fail": "FAIL", "info": "info"}
        for r in results:
            click.echo(f"{marks[r.status]:>4}  {r.check}: {r.summary}")
            if r.status != "ok":
                for d in r.details:
                    click.echo(f"      - {d}")
                for fx in r.fix:
                    click.echo(f"      fix: {fx}")
        bad = sum(1 for r in results if r.status == "fail")
        click.echo(f"\n{'all checks hold' if ok else f'{bad} checks failed'} ({len(results)} checks)")
    if not ok:
        sys.exit(DEGRADED)


@click.command()
@click.option("--format", "fmt", type=click.Choice(["json", "dot", "svg", "html"]), default="json",
              show_default=True)
@common
@click.pass_context
def topology(ctx: click.Context, fmt: str, config: str, **kw: Any) -> None:
    """Hosts, networks (bridges, subnets, VNIs), sandboxes (addresses, labels, published
    ports) and the tunnels between hosts, as JSON, Graphviz DOT, SVG or the page muslind
    serves at /topology of its --metrics-address."""
    from muslin.control import topology as T
    from muslin.control import topology_render as R

    store = _cluster_store(kw)
    try:
        m = _muslin(ctx)
        host = kw.get("hostname") or _agent_hostname(m, kw) or _hostname(kw)
        t = T.gather(m, host, store, [kw["cluster_network"]] if kw.get("cluster_network") else None)
    finally:
        if store is not None:
            store.close()
    render = {"json": lambda x: json.dumps(x, indent=1), "dot": R.to_dot, "svg": R.to_svg, "html": R.to_html}
    click.echo(render[fmt](t), nl=not render[fmt](t).endswith("\n"))


def _agent_hostname(m: Any, kw: dict[str, Any]) -> str:
    """The host name this state dir's cluster agent uses (its status file), if any."""
    from pathlib import Path

    for p in sorted((Path(m.state_dir) / "cluster").glob("*.status.json")):
        try:
            return json.loads(p.read_text()).get("hostname", "")
        except (OSError, ValueError):
            continue
    return ""

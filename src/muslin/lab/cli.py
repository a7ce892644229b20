"""`muslin lab`: virtual multi-host clusters in network namespaces (see lab/core.py)."""

from __future__ import annotations

import json
import os
import signal

import click

from muslin.cli.guard import key_values, one_line_errors, run, version_option
from muslin.cli.output import emit_list, list_options, table
from muslin.lab import core


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@version_option()
def lab() -> None:
    """Virtual multi-host clusters made of network namespaces."""


@lab.command()
@click.argument("name")
@click.option("--hosts", default=3, show_default=True)
@click.option("--backend", default="vxlan", show_default=True, help="vxlan | host-gw | bgp | wireguard")
@click.option("--cidr", default="10.244.0.0/16", show_default=True)
@click.option("--host-prefix", default=24, show_default=True)
@click.option("--cidr6", default="", help="dual-stack: the IPv6 cluster CIDR (an IPv6-only network: give it as --cidr)")
@click.option("--host-prefix6", default=64, show_default=True, help="each host's IPv6 prefix length")
@click.option("--network", default="net0", show_default=True)
@click.option("--vni", default=1, show_default=True)
@click.option("--lease-ttl", default=10, show_default=True, help="seconds: TTL of an agent's liveness key")
@click.option("--subnet-ttl", default=core.DEFAULT_SUBNET_TTL, show_default=True,
              help="seconds: TTL of a host's subnet lease (peers drop a host when it expires)")
@click.option("--resync", default=10.0, show_default=True)
@click.option("--route-reflector", "rrs", multiple=True)
@click.option("--tls", is_flag=True,
              help="etcd over TLS with client certificates and user/password authentication (made with openssl)")
@click.option("--option", "opts", multiple=True, metavar="KEY=VALUE",
              help="a backend option (wireguard: port, strict, keepalive, rotate_every), repeatable")
@click.option("--wait", "wait", type=float, default=None,
              help="seconds to wait for every host's leases and routes [default: 30 + 1 per host]")
@one_line_errors
def up(name, hosts, backend, cidr, host_prefix, cidr6, host_prefix6, network, vni, lease_ttl, subnet_ttl, resync,
       rrs, tls, opts, wait) -> None:
    """Make lab NAME: an underlay, etcd, N hosts each running an agent (made in parallel).

    Returns when every host holds its subnet lease, sees every peer and has a route to
    every peer's subnet in its kernel (for bgp: installed by BIRD)."""
    from rich.console import Console
    console = Console(stderr=True)
    with console.status(f"lab {name}: starting") as status:
        st = core.up(name, hosts, backend, cidr, host_prefix, network, vni, lease_ttl, resync, tuple(rrs),
                     progress=lambda m: status.update(f"lab {name}: {m}"), timeout=wait, subnet_ttl=subnet_ttl,
                     tls=tls, options=key_values(opts, "--option"), cidr6=cidr6, host_prefix6=host_prefix6)
    for h in st.hosts:
        s = core.host_status(st, h)
        console.print(f"[green]✓[/] {h}  {s.get('underlay', '')}  subnet {s.get('subnet', '')} {s.get('subnet6', '')}")
    click.echo(f"lab {name} is up: {len(st.hosts)} hosts, backend {backend}, etcd {st.store_url}")


@lab.command("add-host")
@click.argument("name")
@click.option("--count", default=1, show_default=True, help="how many hosts to add")
@click.option("--network", default="", help="the cluster network their agents join [default: the lab's]")
@click.option("--wait", "wait", type=float, default=None,
              help="seconds to wait for convergence [default: 30 + 1 per host]")
@one_line_errors
def add_host(name, count, network, wait) -> None:
    """Grow a running lab: new hosts on the underlay, each with an agent; waits until every
    host sees them and routes to them."""
    st_hosts = core.add_hosts(name, count, network, wait=True, timeout=wait)
    st = core.LabState.load(name)
    for h in st_hosts:
        s = core.host_status(st, h)
        click.echo(f"{h} {s.get('underlay', '')} subnet {s.get('subnet', '')}")


@lab.command("remove-host")
@click.argument("name")
@click.argument("hosts", nargs=-1, required=True)
@one_line_errors
def remove_host(name, hosts) -> None:
    """Shrink a running lab: each HOST's agent leaves (its peers drop its routes at once),
    then its sandboxes and namespace go."""
    for h in hosts:
        core.remove_host(name, h, wait=h == hosts[-1])
        click.echo(f"{h} removed")


@lab.command("ls")
@list_options
@one_line_errors
def ls(output, quiet, template) -> None:
    """The labs on this machine: backend, hosts (agents running), sandboxes, etcd."""
    items = core.list_labs()
    emit_list(items, output, quiet, template, ["NAME", "BACKEND", "NETWORK", "HOSTS", "AGENTS", "SANDBOXES", "ETCD"],
              lambda i: [i["name"], i["backend"], f"{i['network']} {i['cidr']}", len(i["hosts"]),
                         f"{len(i['agents_running'])}/{len(i['hosts'])}", ",".join(i["sandboxes"]) or "-",
                         f"{i['etcd']} ({'running' if i['etcd_running'] else 'DOWN'})"])



@lab.command()
@click.argument("name")
@click.argument("host")
@click.argument("sandbox")
@click.option("--alias", "aliases", multiple=True, help="Another DNS name of the sandbox (repeatable).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label of the sandbox (repeatable).")
@click.option("--namespace", default="default", show_default=True, help="The sandbox's namespace (network policy).")
@click.option("--expose", multiple=True, metavar="NAME=PORT[/PROTO]", help="A named port (repeatable).")
@one_line_errors
def sandbox(name, host, sandbox, aliases, labels, namespace, expose) -> None:
    """Make a sandbox namespace on HOST attached to the cluster network; print its address.
    Other sandboxes of the lab find it by name (DNS of muslind on each host)."""
    info = core.sandbox(name, host, sandbox, tuple(aliases), tuple(labels), namespace, tuple(expose))
    click.echo(info["address"])


@lab.command("label")
@click.argument("name")
@click.argument("sandbox")
@click.argument("changes", nargs=-1, required=True, metavar="KEY=VALUE|KEY-...")
def label(name, sandbox, changes) -> None:
    """Set (KEY=VALUE) or remove (KEY-) labels of a sandbox (on its host; the other hosts follow)."""
    click.echo(core.label(name, sandbox, tuple(changes)))


@lab.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("sandbox")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@one_line_errors
def exec_(name, sandbox, cmd) -> None:
    """Run CMD inside SANDBOX: muslin lab exec NAME SANDBOX -- CMD ..."""
    cmd = list(cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    argv = core.exec_argv(name, sandbox, cmd)
    os.execvp(argv[0], argv)


@lab.command()
@click.argument("name")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--open", "open_", is_flag=True,
              help="print the URL of the topology page (muslind's, in the first host's namespace) and how to open it")
@one_line_errors
def status(name, output, open_) -> None:
    """Hosts, leases, peers and health of lab NAME; exit status 7 when a host is degraded."""
    from muslin.model.errors import Unavailable
    if open_:
        ns, url = core.topology_url(name)
        click.echo(url)
        click.echo(f"# the page is served inside namespace {ns}: ip netns exec {ns} chromium --no-sandbox {url}",
                   err=True)
        return
    s = core.status(name)
    bad = core.degraded(s)
    if output == "json":
        click.echo(json.dumps(s, indent=1))
        if bad:
            raise Unavailable(bad)
        return
    table(["HOST", "UNDERLAY", "SUBNET", "AGENT", "ALIVE", "PEERS", "HEALTH"],
          [[h, d["underlay"], d["subnet"], f"{d['agent_pid']}" + ("" if d["agent_alive"] else " (dead)"),
            "yes" if d["alive"] else "no", ",".join(d["peers"]), "ok" if d["healthy"] else "degraded"]
           for h, d in s["hosts"].items()],
          title=f"lab {name} ({s['backend']}, {s['cidr']}, etcd {'ok' if s['etcd']['healthy'] else 'DOWN'})")
    for h, d in s["hosts"].items():
        if "wireguard" in d:
            click.echo(_wireguard_lines(h, d["wireguard"]))
    for sb, d in s["sandboxes"].items():
        click.echo(f"sandbox {sb} on {d['host']}: {d['address']}")
    if bad:
        raise Unavailable(bad)


@lab.command()
@click.argument("name")
@click.argument("host")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@one_line_errors
def doctor(name, host, output) -> None:
    """`muslin doctor` on HOST of lab NAME (its state dir, the lab's etcd)."""
    argv = core.doctor_argv(name, host, output)
    os.execvp(argv[0], argv)


def _wireguard_lines(host: str, wg: dict) -> str:
    """A host's WireGuard interface and, one line each, its peers and their last handshake."""
    if not wg.get("up"):
        return f"{host} wireguard {wg.get('ifname') or '?'}: DOWN"
    out = [f"{host} wireguard {wg['ifname']} port {wg['listen_port']}: {len(wg['peers'])} peers"]
    for p, v in sorted(wg["peers"].items()):
        age = v["handshake_age"]
        out.append(f"  peer {p} {v['endpoint']} allowed-ips {','.join(v['allowed_ips'])} "
                   f"last handshake {'never' if age is None else f'{age:.0f} s ago'}")
    return "\n".join(out)


SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "USR1": signal.SIGUSR1}


@lab.command("kill-agent")
@click.argument("name")
@click.argument("host")
@click.option("--signal", "sig", type=click.Choice(sorted(SIGNALS)), default="KILL", show_default=True,
              help="KILL: a crash; TERM: stop keeping everything; USR1: leave the cluster network")
@one_line_errors
def kill_agent(name, host, sig) -> None:
    """Stop HOST's agent with a signal (its routes stay on every host unless it leaves)."""
    pid = core.kill_agent(name, host, SIGNALS[sig])
    click.echo(f"agent of {host} ({pid}) got SIG{sig}" if pid else f"agent of {host} was not running")


@lab.command("restart-agent")
@click.argument("name")
@click.argument("host")
@click.option("--signal", "sig", type=click.Choice(["KILL", "TERM"]), default="TERM", show_default=True,
              help="how to stop the running agent first")
@one_line_errors
def restart_agent(name, host, sig) -> None:
    """Stop HOST's agent if it runs, start a new one, wait until it is back with its lease."""
    pid = core.restart_agent(name, host, SIGNALS[sig])
    click.echo(f"agent of {host} restarted ({pid})")


@lab.command()
@click.option("--hosts", type=click.IntRange(1, 20000), default=100, show_default=True,
              help="simulated hosts (those beyond --agents are watch-only: records, leases, one watch)")
@click.option("--agents", type=click.IntRange(1, 20000), default=None,
              help="how many are whole agents [default: all up to 100, then 100,000 / hosts (>= 20)]")
@click.option("--idle", type=click.FloatRange(1, 3600), default=30, show_default=True, help="seconds measured idle")
@click.option("--joins", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="hosts joining and leaving one at a time")
@click.option("--churn", type=click.FloatRange(0, 1000), default=10, show_default=True,
              help="hosts joining and leaving per second (0: none)")
@click.option("--churn-seconds", type=click.FloatRange(1, 3600), default=30, show_default=True)
@click.option("--resync", type=click.FloatRange(0.5, 3600), default=10, show_default=True)
@click.option("--relist", type=click.FloatRange(1, 86400), default=600, show_default=True,
              help="seconds between an agent's check lists (jittered 0.5x..1.5x; x hosts/100 beyond 100 hosts)")
@click.option("--lease-ttl", type=click.IntRange(3, 3600), default=90, show_default=True,
              help="seconds: each host's liveness lease (renewed as an agent does: every half, >= 15 s early)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@one_line_errors
def simulate(hosts, agents, idle, joins, churn, churn_seconds, resync, relist, lease_ttl, output) -> None:
    """Measure the control plane of a simulated cluster: agents on the in-memory dataplane
    (no namespaces, no root), many in this process, against one etcd started on loopback
    (a free port, a temp dir; stopped and removed at the end)."""
    import sys

    from muslin.lab.sim import simulate as run_sim, summary

    r = run_sim(hosts, agents, idle=idle, joins=joins, churn=churn, churn_seconds=churn_seconds, resync=resync,
                relist=relist, lease_ttl=lease_ttl, log=lambda m: print(m, file=sys.stderr, flush=True))
    if output == "json":
        click.echo(json.dumps(r, indent=1))
    else:
        table(["MEASURE", "VALUE", "DETAIL"], summary(r))


@lab.command()
@click.argument("name")
@one_line_errors
def down(name) -> None:
    """Remove every namespace, process and file of lab NAME (idempotent)."""
    removed = core.down(name)
    click.echo(f"lab {name} is down ({len(removed)} namespaces removed)")


def main(argv: list[str] | None = None) -> None:
    run(lab, argv, prog_name="muslin lab")

"""`muslin install` and `muslin uninstall` (what they write: cli/installer.py, docs/install.md)."""

from __future__ import annotations

import click

from muslin.cli import installer
from muslin.cli.output import OUTPUT
from muslin.control.settings import DEFAULT_AGENT_SOCKET, DEFAULT_STATE_DIR


@click.command()
@click.option("--root", default="/", show_default=True, metavar="DIR",
              help="Write everything under DIR (what the files say stays the target system's paths).")
@click.option("--layout", type=click.Choice(sorted(installer.LAYOUTS)), default="local", show_default=True,
              help="local: /opt/cni/bin, /etc/systemd/system; debian: /usr/lib/cni, /lib/systemd/system, "
                   "/usr/share completions.")
@click.option("--cni-network", default="", metavar="NAME", help="Write NAME.conflist: a bridge network on --subnet.")
@click.option("--subnet", multiple=True, metavar="CIDR", help="Subnet of --cni-network (repeat for dual stack).")
@click.option("--cluster-network", default="", metavar="NAME",
              help="Write NAME.conflist joining this cluster network, and set it in muslind.toml.")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True, metavar="PATH",
              help="muslind's and the conflist's state directory (dataDir).")
@click.option("--agent-socket", default=DEFAULT_AGENT_SOCKET, show_default=True, metavar="PATH",
              help="The CNI agent socket (the socket unit, muslind.toml and the conflist agree).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any muslind setting for muslind.toml, e.g. --set cluster-store=etcds://h1:2379,h2:2379.")
@click.option("--cni-bin-dir", default="", metavar="DIR", help="Plugin directory (default: the layout's).")
@click.option("--cni-conf-dir", default="", metavar="DIR", help="Conflist directory (default: the layout's).")
@click.option("--muslind", "muslind", default="", metavar="PATH",
              help="muslind for the unit's ExecStart (default: the one next to this Python).")
@click.option("--native", default="", metavar="PATH",
              help="The native forwarder to install as the plugins (default: <prefix>/lib/muslin-fwd).")
@click.option("--python-entry", is_flag=True, help="Install the Python entry as the plugins even if a native one exists.")
@click.option("--completion", "shells", default=None, metavar="SHELLS",
              help="Comma-separated shells to install completion for, '' for none (local: bash; debian: all).")
@OUTPUT
def install(root, layout, cni_network, subnet, cluster_network, state_dir, agent_socket, settings, cni_bin_dir,
            cni_conf_dir, muslind, native, python_entry, shells, output) -> None:
    """Install the CNI plugins, muslind's config and systemd units (and a conflist).

    Nothing that is there and was not written by `muslin install` is overwritten; running it
    again writes only what changed; `muslin uninstall` removes exactly what it wrote."""
    o = installer.Options(root=root, layout=layout, cni_bin_dir=cni_bin_dir, cni_conf_dir=cni_conf_dir,
                          cni_network=cni_network, subnets=tuple(subnet), cluster_network=cluster_network,
                          state_dir=state_dir, agent_socket=agent_socket, settings=tuple(settings), muslind=muslind,
                          native=native, python_entry=python_entry,
                          completions=None if shells is None else tuple(s for s in shells.split(",") if s))
    p, written = installer.install(o)
    done = {f.path for f in written}
    if output == "json":
        import json

        click.echo(json.dumps({"root": root, "files": [{"path": f.path, "what": f.what, "written": f.path in done}
                                                        for f in p.files], "notes": p.notes}, indent=2))
        return
    for f in p.files:
        click.echo(f"{'wrote    ' if f.path in done else 'unchanged'} {installer.under(root, f.path)}  ({f.what})")
    for n in p.notes:
        click.echo(f"note: {n}")
    if root in ("", "/"):
        click.echo("next: systemctl daemon-reload && systemctl enable --now muslind.socket muslind.service")


@click.command()
@click.option("--root", default="/", show_default=True, metavar="DIR", help="Where `muslin install --root` wrote.")
@click.option("--force", is_flag=True, help="Remove files changed since install too.")
def uninstall(root, force) -> None:
    """Remove exactly what `muslin install` wrote (files changed since are kept)."""
    if root in ("", "/") and installer.systemd_running():
        import subprocess

        if subprocess.run(["systemctl", "is-active", "--quiet", "muslind.service"]).returncode == 0:
            from muslin.model.errors import Conflict

            raise Conflict("muslind.service is running: systemctl disable --now muslind.service muslind.socket first")
    removed, kept = installer.uninstall(root, force)
    for r in removed:
        click.echo(f"removed {r}")
    for k in kept:
        click.echo(f"kept {k}: changed since muslin install wrote it (--force removes it)", err=True)
    if not removed and not kept:
        click.echo(f"nothing installed under {root}")

"""The `muslin` command: networks, sandboxes, connect/disconnect, demo, lab."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from typing import Any

import click

from muslin.model.errors import Invalid, MuslinError

OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
                      help="Output format.")


class Ctx:
    def __init__(self, state_dir: str | None) -> None:
        self.state_dir = os.path.abspath(state_dir) if state_dir else None
        self._muslin = None

    @property
    def muslin(self):
        if self._muslin is None:
            from muslin.control.service import Muslin

            self._muslin = Muslin(state_dir=self.state_dir)
        return self._muslin


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", envvar="MUSLIN_STATE_DIR", help="State directory (default /var/lib/muslin).")
@click.option("--host-netns", envvar="MUSLIN_HOST_NETNS", help="Do Muslin's work inside this namespace (the host).")
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None, host_netns: str | None) -> None:
    """Muslin: container networks on Linux (CNI, Docker, many hosts)."""
    if host_netns:
        from muslin.control.hostns import enter

        enter(host_netns)
    ctx.obj = Ctx(state_dir)


def emit(data: Any, output: str, table: Any = None) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
        return
    from rich.console import Console

    Console().print(table if table is not None else data)


def make_table(columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    t = Table(*columns, box=None, header_style="bold")
    for r in rows:
        t.add_row(*[str(c) for c in r])
    return t


# -- networks ----------------------------------------------------------------------------
@cli.group()
def network() -> None:
    """Create, list, inspect and remove networks."""


def parse_opts(opts: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for o in opts:
        if "=" not in o:
            raise Invalid(f"option {o!r} is not KEY=VALUE")
        k, v = o.split("=", 1)
        out[k] = v
    return out


@network.command("create")
@click.argument("name")
@click.option("--driver", "-d", default="bridge", show_default=True,
              help="bridge, macvlan, host, none, container (ipvlan: unsupported here).")
@click.option("--subnet", multiple=True, help="Subnet (repeat for dual stack).")
@click.option("--gateway", multiple=True, help="Gateway for the subnet at the same position.")
@click.option("--ip-range", multiple=True, help="Allocate only from this sub-range (CIDR), by position.")
@click.option("--bridge", default="", help="Bridge name (default mus-NAME).")
@click.option("--reuse-bridge", is_flag=True, help="Use the existing bridge --bridge names (Muslin never deletes it).")
@click.option("--mtu", type=int, default=0, help="MTU (default: the host's).")
@click.option("--internal", is_flag=True, help="No traffic in or out of the network.")
@click.option("--no-masquerade", is_flag=True, help="Do not NAT outbound traffic.")
@click.option("--no-isolate", is_flag=True, help="Allow traffic to other Muslin bridges.")
@click.option("--hairpin", is_flag=True, help="Hairpin mode on the bridge ports.")
@click.option("--parent", default="", help="macvlan: parent link.")
@click.option("--mode", default="bridge", help="macvlan mode.")
@click.option("--opt", multiple=True, help="Driver option KEY=VALUE.")
@OUTPUT
@click.pass_obj
def network_create(obj: Ctx, name, driver, subnet, gateway, ip_range, bridge, reuse_bridge, mtu, internal,
                   no_masquerade, no_isolate, hairpin, parent, mode, opt, output) -> None:
    """Create network NAME."""
    from muslin.model.types import IPRange, Network

    sets = []
    for i, s in enumerate(subnet):
        try:
            net = ipaddress.ip_network(s)
            gw = ipaddress.ip_address(gateway[i]) if i < len(gateway) else None
            start = end = None
            if i < len(ip_range):
                sub = ipaddress.ip_network(ip_range[i])
                start, end = sub[0] if sub.num_addresses == 1 else sub[1], sub[-1] if sub.version == 6 else sub[-2]
        except ValueError as e:
            raise Invalid(f"bad address: {e}") from None
        sets.append((IPRange(net, start, end, gw),))
    from muslin.drivers.base import get_driver

    opts = parse_opts(opt)
    known = get_driver(driver).options
    for k in opts:
        if k not in known:
            raise Invalid(f"unknown --opt {k!r} for driver {driver}"
                          + (f" (known: {', '.join(known)})" if known else " (it takes none)"))
    if parent and driver != "macvlan":
        raise Invalid(f"--parent is only for --driver macvlan, not {driver}")
    if mode != "bridge" and driver != "macvlan":
        raise Invalid(f"--mode is only for --driver macvlan, not {driver}")
    if bridge and driver != "bridge" or reuse_bridge and driver != "bridge":
        raise Invalid(f"--bridge and --reuse-bridge are only for --driver bridge, not {driver}")
    if reuse_bridge and not bridge:
        raise Invalid("--reuse-bridge needs --bridge NAME (the existing bridge)")
    n = Network(name=name, driver=driver, bridge=bridge, range_sets=tuple(sets), mtu=mtu,
                masquerade=not no_masquerade, internal=internal, isolate=not no_isolate, hairpin=hairpin,
                parent=parent, mode=mode if driver == "macvlan" else "bridge", origin="cli",
                options=tuple(sorted(opts.items())), reuse_bridge=reuse_bridge)
    made = obj.muslin.create_network(n)
    emit(made.to_dict(), output, f"network {made.name} created ({', '.join(map(str, made.subnets)) or made.driver})")


@network.command("ls")
@OUTPUT
@click.pass_obj
def network_ls(obj: Ctx, output) -> None:
    """List networks."""
    nets = obj.muslin.list_networks()
    counts = {n.name: len(obj.muslin.endpoints(n.name)) for n in nets}
    rows = [[n.name, n.driver, n.bridge or "-", ", ".join(map(str, n.subnets)) or "-", counts[n.name], n.origin]
            for n in nets]
    emit([{**n.to_dict(), "endpoints": counts[n.name]} for n in nets], output,
         make_table(["NAME", "DRIVER", "BRIDGE", "SUBNETS", "ENDPOINTS", "ORIGIN"], rows))


@network.command("inspect")
@click.argument("name")
@OUTPUT
@click.pass_obj
def network_inspect(obj: Ctx, name, output) -> None:
    """Show a network and its endpoints."""
    net = obj.muslin.get_network(name)
    data = {**net.to_dict(), "endpoints": [e.to_dict() for e in obj.muslin.endpoints(name)]}
    emit(data, output, json.dumps(data, indent=2))


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", "-f", is_flag=True, help="Disconnect its endpoints first.")
@click.pass_obj
def network_rm(obj: Ctx, names, force) -> None:
    """Remove networks (each one; the exit status is the first failure's)."""
    first: MuslinError | None = None
    for n in names:
        try:
            obj.muslin.delete_network(n, force=force)
            click.echo(n)
        except MuslinError as e:
            click.echo(f"error: {n}: {e}", err=True)
            first = first or e
    if first is not None:
        sys.exit(first.exit_status)


# -- sandboxes ---------------------------------------------------------------------------
@cli.group()
def sandbox() -> None:
    """Sandboxes: named network namespaces (containers without an image)."""


@sandbox.command("create")
@click.argument("name")
@click.pass_obj
def sandbox_create(obj: Ctx, name) -> None:
    """Create sandbox NAME (/run/netns/NAME, loopback up)."""
    from muslin.control import sandboxes

    sandboxes.create(obj.muslin, name)
    click.echo(name)


@sandbox.command("ls")
@OUTPUT
@click.pass_obj
def sandbox_ls(obj: Ctx, output) -> None:
    """List sandboxes and their addresses."""
    from muslin.control import sandboxes

    items = sandboxes.list_all(obj.muslin)
    rows = [[s["name"], ", ".join(f"{e['network']}:{e['ifname']}={'/'.join(e['addresses'])}" for e in s["endpoints"]) or "-"]
            for s in items]
    emit(items, output, make_table(["NAME", "ENDPOINTS"], rows))


@sandbox.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def sandbox_rm(obj: Ctx, names) -> None:
    """Disconnect and remove sandboxes (idempotent)."""
    from muslin.control import sandboxes

    for n in names:
        sandboxes.remove(obj.muslin, n)
        click.echo(n)


@sandbox.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def sandbox_exec(obj: Ctx, name, command) -> None:
    """Run COMMAND inside sandbox NAME."""
    from muslin.control import sandboxes

    sandboxes.require(obj.muslin, name)
    os.execvp("ip", ["ip", "netns", "exec", name, *command])


def parse_publish(values: tuple[str, ...]):
    from muslin.model.types import PortMapping

    out = []
    for v in values:
        spec, _, proto = v.partition("/")
        parts = spec.rsplit(":", 2)
        try:
            if len(parts) == 3:
                out.append(PortMapping(int(parts[1]), int(parts[2]), proto or "tcp", parts[0]))
            elif len(parts) == 2:
                out.append(PortMapping(int(parts[0]), int(parts[1]), proto or "tcp"))
            else:
                raise ValueError
        except ValueError:
            raise Invalid(f"--publish {v!r}: use [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]") from None
    return tuple(out)


@cli.command()
@click.argument("network_name", metavar="NETWORK")
@click.argument("sandbox_name", metavar="SANDBOX")
@click.option("--ip", multiple=True, help="Requested address (repeat for dual stack).")
@click.option("--mac", default="", help="Requested MAC address.")
@click.option("--ifname", default=None, help="Interface name in the sandbox (default: the next free ethN).")
@click.option("--publish", "-p", multiple=True, help="[HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTO]")
@click.option("--default-route", is_flag=True,
              help="Route the sandbox's default traffic through this network (else only its first network does).")
@click.option("--alias", multiple=True, help="Another DNS name of the sandbox on this network (repeatable).")
@click.option("--label", "labels", multiple=True, help="A label KEY=VALUE of the sandbox (repeatable).")
@OUTPUT
@click.pass_obj
def connect(obj: Ctx, network_name, sandbox_name, ip, mac, ifname, publish, default_route, alias, labels,
            output) -> None:
    """Connect SANDBOX to NETWORK."""
    from muslin.control import sandboxes
    from muslin.model.names import parse_label_changes

    try:
        ips = tuple(ipaddress.ip_address(i.strip()) for i in ip)
    except ValueError as e:
        raise Invalid(f"--ip: {e}") from None
    sets, drops = parse_label_changes(labels, "--label")
    if drops:
        raise Invalid(f"--label {drops[0]}-: connect sets labels (KEY=VALUE); remove them with muslin label")
    ep = sandboxes.connect(obj.muslin, network_name, sandbox_name, ifname, ips, mac, parse_publish(publish),
                           default_route, alias, sets)
    emit(ep.to_dict(), output, f"{sandbox_name}:{ep.ifname} {' '.join(map(str, ep.addresses))} mac {ep.mac}")


@cli.command()
@click.argument("network_name", metavar="NETWORK")
@click.argument("sandbox_name", metavar="SANDBOX")
@click.option("--ifname", default="", help="Only this interface (default: all on that network).")
@click.pass_obj
def disconnect(obj: Ctx, network_name, sandbox_name, ifname) -> None:
    """Disconnect SANDBOX from NETWORK."""
    from muslin.control import sandboxes

    sandboxes.disconnect(obj.muslin, network_name, sandbox_name, ifname)


@cli.command()
@click.argument("sandbox_name", metavar="SANDBOX")
@click.argument("changes", nargs=-1, required=True, metavar="KEY=VALUE|KEY-...")
@OUTPUT
@click.pass_obj
def label(obj: Ctx, sandbox_name, changes, output) -> None:
    """Set (KEY=VALUE) or remove (KEY-) labels of SANDBOX on all its networks, at once."""
    from muslin.control import sandboxes
    from muslin.model.names import parse_label_changes

    sets, drops = parse_label_changes(changes)
    now = sandboxes.label(obj.muslin, sandbox_name, sets, drops)
    emit(now, output, " ".join(f"{k}={v}" for k, v in sorted(now.items())) or "(no labels)")


def _mount_optional_groups() -> None:
    try:
        from muslin.cli.demo import demo

        cli.add_command(demo)
    except ImportError:
        pass
    try:
        from muslin.lab.cli import lab

        cli.add_command(lab)
    except ImportError:
        pass


_mount_optional_groups()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except MuslinError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - no traceback reaches a user
        click.echo(f"error: internal: {type(e).__name__}: {e}", err=True)
        sys.exit(70)


if __name__ == "__main__":
    main()

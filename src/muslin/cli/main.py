"""The `muslin` command: networks, sandboxes, connect/disconnect, cluster, install, demo, lab,
doctor, topology.

Read commands take -o table|json, -q and --format (cli/output.py); tables are plain and
never cut when stdout is not a terminal."""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

import click

from muslin.cli.guard import run, version_option
from muslin.cli.output import OUTPUT, each, emit_list, emit_one, fields, list_options, one_options, table
from muslin.model.errors import Invalid


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


class Muslin(click.Group):
    """The root group: the bigger command groups are imported when they are used."""

    LAZY = {"cluster": "muslin.control.agent_cli:cli", "install": "muslin.cli.install:install",
            "uninstall": "muslin.cli.install:uninstall", "completion": "muslin.cli.completion:completion",
            "lab": "muslin.lab.cli:lab", "demo": "muslin.cli.demo:demo", "doctor": "muslin.cli.diagnose:doctor",
            "topology": "muslin.cli.diagnose:topology", "service": "muslin.cli.services:service",
            "policy": "muslin.cli.policy:policy", "namespace": "muslin.cli.policy:namespace"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.LAZY))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in self.LAZY:
            return super().get_command(ctx, name)
        import importlib

        module, attr = self.LAZY[name].split(":")
        try:
            cmd = getattr(importlib.import_module(module), attr)
        except ImportError:
            return None
        self.add_command(cmd, name)
        return cmd


@click.group(cls=Muslin, context_settings={"help_option_names": ["-h", "--help"]})
@version_option()
@click.option("--state-dir", envvar="MUSLIN_STATE_DIR", show_envvar=True, metavar="PATH",
              help="State directory (default /var/lib/muslin).")
@click.option("--host-netns", envvar="MUSLIN_HOST_NETNS", show_envvar=True, metavar="NAME",
              help="Do Muslin's work inside this namespace (the host).")
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None, host_netns: str | None) -> None:
    """Muslin: container networks on Linux (CNI, Docker, many hosts)."""
    if host_netns:
        from muslin.control.hostns import enter

        enter(host_netns)
    ctx.obj = Ctx(state_dir)


def emit(data: Any, output: str, line: str) -> None:
    """What a change command prints: one line, or the JSON form with -o json."""
    click.echo(json.dumps(data, indent=2, default=str) if output == "json" else line)


def _complete_networks(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from muslin.cli import completion

    return completion.networks(ctx, param, incomplete)


def _complete_sandboxes(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from muslin.cli import completion

    return completion.sandboxes(ctx, param, incomplete)


NETWORK = {"shell_complete": _complete_networks}
SANDBOX = {"shell_complete": _complete_sandboxes}


# -- networks ----------------------------------------------------------------------------
@cli.group()
def network() -> None:
    """Create, list, inspect and remove networks."""


def parse_opts(opts: tuple[str, ...], what: str = "option") -> dict[str, str]:
    out = {}
    for o in opts:
        if "=" not in o:
            raise Invalid(f"{what} {o!r} is not KEY=VALUE")
        k, v = o.split("=", 1)
        out[k] = v
    return out


def parse_labels(labels: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = {}
    for lab in labels:
        k, _, v = lab.partition("=")
        if not k or k != k.strip() or any(c.isspace() or c == "," for c in k):
            raise Invalid(f"--label {lab!r}: use KEY=VALUE (a key without spaces or commas)")
        if k.startswith("muslin."):
            raise Invalid(f"--label {lab!r}: keys starting with 'muslin.' are Muslin's own")
        out[k] = v
    return tuple(sorted(out.items()))


FILTERS = ("name", "driver", "label", "origin")


def network_filter(filters: tuple[str, ...]) -> Any:
    """--filter name=SUBSTRING, driver=D, origin=cli|docker|cni, label=KEY or label=KEY=VALUE (all must hold)."""
    tests = []
    for f in filters:
        k, sep, v = f.partition("=")
        if not sep or k not in FILTERS:
            raise Invalid(f"--filter {f!r}: use KEY=VALUE with KEY one of {', '.join(FILTERS)}")
        if k == "name":
            tests.append(lambda n, v=v: v in n.name)
        elif k == "driver":
            tests.append(lambda n, v=v: n.driver == v)
        elif k == "origin":
            tests.append(lambda n, v=v: n.origin == v)
        else:
            lk, has_v, lv = v.partition("=")
            tests.append(lambda n, lk=lk, has_v=has_v, lv=lv: lk in dict(n.labels) and
                         (not has_v or dict(n.labels)[lk] == lv))
    return lambda n: all(t(n) for t in tests)


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
@click.option("--no-spoofcheck", is_flag=True,
              help="Let sandboxes send from other MAC and IP addresses than theirs (anti-spoofing off).")
@click.option("--parent", default="", help="macvlan: parent link.")
@click.option("--mode", default="bridge", help="macvlan mode.")
@click.option("--opt", multiple=True, help="Driver option KEY=VALUE.")
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="A label (repeat); `ls --filter label=KEY` finds it.")
@click.option("--service-range", default="", metavar="CIDR",
              help="Where its services' virtual IPs come from (default: a free /20 of 10.96.0.0/12).")
@OUTPUT
@click.pass_obj
def network_create(obj: Ctx, name, driver, subnet, gateway, ip_range, bridge, reuse_bridge, mtu, internal,
                   no_masquerade, no_isolate, hairpin, no_spoofcheck, parent, mode, opt, label, service_range,
                   output) -> None:
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
                options=tuple(sorted(opts.items())), reuse_bridge=reuse_bridge, labels=parse_labels(label),
                spoofcheck=not no_spoofcheck, service_range=service_range)
    made = obj.muslin.create_network(n)
    emit(made.to_dict(), output, f"network {made.name} created ({', '.join(map(str, made.subnets)) or made.driver})")


@network.command("ls")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="name=SUBSTRING, driver=DRIVER, origin=cli|docker|cni, label=KEY[=VALUE] (repeat: all hold).")
@list_options
@click.pass_obj
def network_ls(obj: Ctx, filters, output, quiet, template) -> None:
    """List networks."""
    keep = network_filter(filters)
    nets = [n for n in obj.muslin.list_networks() if keep(n)]
    counts = {n.name: len(obj.muslin.endpoints(n.name)) for n in nets}
    emit_list([{**n.to_dict(), "subnets": [str(s) for s in n.subnets], "endpoints": counts[n.name]} for n in nets],
              output, quiet, template, ["NAME", "DRIVER", "BRIDGE", "SUBNETS", "ENDPOINTS", "ORIGIN"],
              lambda i: [i["name"], i["driver"], i.get("bridge") or "-", ", ".join(i["subnets"]) or "-",
                         i["endpoints"], i.get("origin", "")])


def _network_view(data: dict[str, Any]) -> None:
    flags = [k for k in ("internal", "hairpin", "reuse_bridge") if data.get(k)]
    flags += [f"no {k}" for k in ("masquerade", "isolate", "spoofcheck") if k in data and not data[k]]
    fields([("name", data["name"]), ("driver", data["driver"]), ("bridge", data.get("bridge")),
            ("subnets", ", ".join(data.get("subnets", []))), ("mtu", data.get("mtu") or "host's"),
            ("parent", data.get("parent")), ("mode", data.get("mode") if data["driver"] == "macvlan" else ""),
            ("options", ", ".join(f"{k}={v}" for k, v in dict(data.get("options") or {}).items())),
            ("labels", ", ".join(f"{k}={v}" for k, v in dict(data.get("labels") or {}).items())),
            ("flags", ", ".join(flags)), ("origin", data.get("origin")),
            ("endpoints", len(data["endpoints"]))])
    if data["endpoints"]:
        click.echo()
        table(["ENDPOINT", "IFNAME", "ADDRESSES", "MAC", "NETNS"],
              [[e.get("endpoint_id", ""), e.get("ifname", ""), ", ".join(map(str, e.get("addresses", []))),
                e.get("mac", ""), e.get("netns", "")] for e in data["endpoints"]])


@network.command("inspect")
@click.argument("name", **NETWORK)
@one_options
@click.pass_obj
def network_inspect(obj: Ctx, name, output, template) -> None:
    """Show a network and its endpoints."""
    net = obj.muslin.get_network(name)
    data = {**net.to_dict(), "subnets": [str(s) for s in net.subnets],
            "endpoints": [e.to_dict() for e in obj.muslin.endpoints(name)]}
    emit_one(data, output, template, lambda: _network_view(data))


@network.command("prune")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE", help="Only networks matching (as in ls).")
@click.option("--force", "-f", is_flag=True, help="Do not ask.")
@click.pass_obj
def network_prune(obj: Ctx, filters, force) -> None:
    """Remove the networks made with `muslin network create` that have no endpoint.

    Docker's and CNI's networks and the hosts' side of cluster networks are left alone
    (their owners remove them)."""
    keep = network_filter(filters)
    gone = [n for n in obj.muslin.list_networks() if keep(n) and n.origin == "cli"
            and "muslin.cluster" not in dict(n.labels) and not obj.muslin.has_endpoints(n.name)]
    if not gone:
        return
    if not force:
        click.confirm(f"Remove {len(gone)} unused network(s): {', '.join(n.name for n in gone)}?", abort=True,
                      err=True)
    each([n.name for n in gone], obj.muslin.delete_network)


@network.command("repair")
@click.argument("names", nargs=-1, **NETWORK)
@click.pass_obj
def network_repair(obj: Ctx, names) -> None:
    """Put back what was changed by hand (all networks, or those named): a missing bridge,
    veths off their bridge, the firewall table and its sysctls, DOCKER-USER pairs, and
    retired links not yet deleted. `muslin doctor` says when to run it."""
    from muslin.control.repair import repair

    for line in repair(obj.muslin, list(names) or None):
        click.echo(line)


@network.command("rm")
@click.argument("names", nargs=-1, required=True, **NETWORK)
@click.option("--force", "-f", is_flag=True, help="Disconnect its endpoints first.")
@click.pass_obj
def network_rm(obj: Ctx, names, force) -> None:
    """Remove networks (each one; the exit status is the first failure's)."""
    each(names, lambda n: obj.muslin.delete_network(n, force=force))


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
@list_options
@click.pass_obj
def sandbox_ls(obj: Ctx, output, quiet, template) -> None:
    """List sandboxes and their addresses."""
    from muslin.control import sandboxes

    items = sandboxes.list_all(obj.muslin)
    emit_list(items, output, quiet, template, ["NAME", "ENDPOINTS"],
              lambda s: [s["name"], ", ".join(f"{e['network']}:{e['ifname']}={'/'.join(e['addresses'])}"
                                              for e in s["endpoints"]) or "-"])


@sandbox.command("rm")
@click.argument("names", nargs=-1, required=True, **SANDBOX)
@click.pass_obj
def sandbox_rm(obj: Ctx, names) -> None:
    """Disconnect and remove sandboxes (idempotent)."""
    from muslin.control import sandboxes

    for n in names:
        sandboxes.remove(obj.muslin, n)
        click.echo(n)


@sandbox.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name", **SANDBOX)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def sandbox_exec(obj: Ctx, name, command) -> None:
    """Run COMMAND inside sandbox NAME."""
    from muslin.control import sandboxes

    sandboxes.require(obj.muslin, name)
    os.execvp("ip", ["ip", "netns", "exec", name, *command])


def parse_publish(values: tuple[str, ...]):
    """[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp|sctp]; an IPv6 HOSTIP in brackets."""
    from muslin.model.types import PortMapping

    out = []
    usage = "use [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp|sctp]"
    for v in values:
        spec, _, proto = v.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise Invalid(f"--publish {v!r}: protocol {proto!r} is not tcp, udp or sctp")
        parts = spec.rsplit(":", 2)
        if len(parts) not in (2, 3):
            raise Invalid(f"--publish {v!r}: {usage}")
        host_ip = parts[0].removeprefix("[").removesuffix("]") if len(parts) == 3 else ""
        try:
            hp, cp = int(parts[-2]), int(parts[-1])
        except ValueError:
            raise Invalid(f"--publish {v!r}: {usage}") from None
        for what, port in (("host port", hp), ("container port", cp)):
            if not 1 <= port <= 65535:
                raise Invalid(f"--publish {v!r}: {what} {port} is not in 1-65535")
        if host_ip:
            try:
                host_ip = str(ipaddress.ip_address(host_ip))
            except ValueError:
                raise Invalid(f"--publish {v!r}: host address {host_ip!r} is not an IP address") from None
        out.append(PortMapping(hp, cp, proto, host_ip))
    return tuple(out)


def parse_expose(values: tuple[str, ...]):
    """--expose NAME=PORT[/PROTO] -> NamedPort (checked by the use-case)."""
    from muslin.model.types import NamedPort

    return tuple(NamedPort.parse(v) for v in values)


def parse_bandwidth(ingress_rate: str, egress_rate: str, ingress_burst: str, egress_burst: str):
    """The --*-rate/--*-burst options -> Bandwidth (None without a rate); a burst left out
    is 10 ms of its rate (at least 64 KiB)."""
    from muslin.model.rates import check_bandwidth, default_burst, parse_bits
    from muslin.model.types import Bandwidth

    vals = []
    for way, rate, burst in (("ingress", ingress_rate, ingress_burst), ("egress", egress_rate, egress_burst)):
        r = parse_bits(rate, f"--{way}-rate") if rate else 0
        if burst and not r:
            raise Invalid(f"--{way}-burst needs --{way}-rate")
        b = parse_bits(burst, f"--{way}-burst") if burst else (default_burst(r) if r else 0)
        vals += [r, b]
    bw = check_bandwidth(Bandwidth(*vals), "--")
    return bw if bw else None


@cli.command()
@click.argument("network_name", metavar="NETWORK", **NETWORK)
@click.argument("sandbox_name", metavar="SANDBOX", **SANDBOX)
@click.option("--ip", multiple=True, help="Requested address (repeat for dual stack).")
@click.option("--mac", default="", help="Requested MAC address.")
@click.option("--ifname", default=None, help="Interface name in the sandbox (default: the next free ethN).")
@click.option("--publish", "-p", multiple=True, help="[HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTO]")
@click.option("--default-route", is_flag=True,
              help="Route the sandbox's default traffic through this network (else only its first network does).")
@click.option("--alias", multiple=True, help="Another DNS name of the sandbox on this network (repeatable).")
@click.option("--label", "labels", multiple=True, help="A label KEY=VALUE of the sandbox (repeatable).")
@click.option("--namespace", default=None, help="The sandbox's namespace, for network policy (default: default).")
@click.option("--expose", multiple=True, metavar="NAME=PORT[/PROTO]",
              help="A named port of the sandbox (network policy's named ports; repeatable).")
@click.option("--ingress-rate", default="", help="Limit traffic into the sandbox, e.g. 10mbit (bit/s).")
@click.option("--egress-rate", default="", help="Limit traffic out of the sandbox, e.g. 10mbit (bit/s).")
@click.option("--ingress-burst", default="", help="Bucket of the ingress limit in bits, e.g. 512kbit.")
@click.option("--egress-burst", default="", help="Bucket of the egress limit in bits, e.g. 512kbit.")
@OUTPUT
@click.pass_obj
def connect(obj: Ctx, network_name, sandbox_name, ip, mac, ifname, publish, default_route, alias, labels,
            namespace, expose, ingress_rate, egress_rate, ingress_burst, egress_burst, output) -> None:
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
    bw = parse_bandwidth(ingress_rate, egress_rate, ingress_burst, egress_burst)
    ep = sandboxes.connect(obj.muslin, network_name, sandbox_name, ifname, ips, mac, parse_publish(publish),
                           default_route, alias, sets, namespace, parse_expose(expose), bandwidth=bw)
    emit(ep.to_dict(), output, f"{sandbox_name}:{ep.ifname} {' '.join(map(str, ep.addresses))} mac {ep.mac}")


@cli.command()
@click.argument("network_name", metavar="NETWORK", **NETWORK)
@click.argument("sandbox_name", metavar="SANDBOX", **SANDBOX)
@click.option("--ifname", default="", help="Only this interface (default: all on that network).")
@click.pass_obj
def disconnect(obj: Ctx, network_name, sandbox_name, ifname) -> None:
    """Disconnect SANDBOX from NETWORK."""
    from muslin.control import sandboxes

    sandboxes.disconnect(obj.muslin, network_name, sandbox_name, ifname)


@cli.command()
@click.argument("sandbox_name", metavar="SANDBOX", **SANDBOX)
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


def main(argv: list[str] | None = None) -> None:
    run(cli, argv, prog_name="muslin")


if __name__ == "__main__":
    main()

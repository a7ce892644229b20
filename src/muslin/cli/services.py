"""`muslin service create|ls|inspect|rm`: virtual IPs in front of labelled endpoints."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import click

from muslin.cli.output import OUTPUT, each, emit_list, emit_one, fields, list_options, one_options, table
from muslin.model.errors import Invalid


def parse_port(text: str):  # type: ignore[no-untyped-def]
    """PORT[:TARGET][/PROTO] (default tcp) -> ServicePort."""
    from muslin.model.types import ServicePort

    spec, _, proto = text.partition("/")
    port, _, target = spec.partition(":")
    try:
        p = ServicePort(int(port), (proto or "tcp").lower(), int(target) if target else 0)
    except ValueError:
        raise Invalid(f"--port {text!r}: use PORT[:TARGETPORT][/tcp|udp|sctp], e.g. 80/tcp or 53/udp") from None
    return p


def _selector(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            raise Invalid(f"--selector {item!r}: use KEY=VALUE (an endpoint label)")
        out[k] = v
    return out


def view(svc: Any) -> dict[str, Any]:
    d = svc.to_dict()
    d["ports"] = [str(p) for p in svc.ports]
    d["endpoints"] = len(svc.backends)
    return d


@click.group()
def service() -> None:
    """Services: a virtual IP (and DNS name) in front of the endpoints a selector matches."""


@service.command("create")
@click.argument("name")
@click.option("--network", required=True, help="The network (a bridge network).")
@click.option("--port", "ports", multiple=True, required=True, metavar="PORT[:TARGET][/PROTO]",
              help="A port of the VIP, e.g. 80/tcp, 53/udp, 80:8080/tcp (repeat).")
@click.option("--selector", multiple=True, required=True, metavar="KEY=VALUE",
              help="Endpoints whose labels hold every pair (repeat).")
@click.option("--vip", default="", help="The virtual IP (default: the next free one of the network's service range).")
@click.option("--affinity", type=int, default=0, metavar="SECONDS",
              help="A client keeps its endpoint for this long after its last new connection (0: none).")
@click.option("--namespace", default="default", show_default=True, help="Select endpoints of this namespace.")
@OUTPUT
@click.pass_obj
def create(obj: Any, name, network, ports, selector, vip, affinity, namespace, output) -> None:
    """Create service NAME: its name resolves to the VIP on the network's DNS."""
    parsed = [parse_port(p) for p in ports]
    addr = None
    if vip:
        try:
            addr = ipaddress.ip_address(vip)
        except ValueError:
            raise Invalid(f"--vip {vip!r} is not an IP address") from None
    svc = obj.muslin.create_service(name, network, parsed, _selector(selector), addr, affinity, namespace)
    n = len(svc.backends)
    line = (f"service {svc.name} created on {svc.network}: VIP {svc.vip} {' '.join(str(p) for p in svc.ports)}, "
            f"{n} endpoint{'' if n == 1 else 's'}")
    click.echo(json.dumps(view(svc), indent=2) if output == "json" else line)


@service.command("ls")
@click.option("--network", default=None, help="Only this network's.")
@list_options
@click.pass_obj
def ls(obj: Any, network, output, quiet, template) -> None:
    """List services."""
    items = [view(s) for s in obj.muslin.list_services(network)]
    emit_list(items, output, quiet, template, ["NAME", "NETWORK", "VIP", "PORTS", "SELECTOR", "ENDPOINTS"],
              lambda i: [i["name"], i["network"], i["vip"], " ".join(i["ports"]),
                         ",".join(f"{k}={v}" for k, v in i["selector"].items()), i["endpoints"]])


@service.command("inspect")
@click.argument("name")
@click.option("--network", default=None, help="The service's network (when the name is on several).")
@one_options
@click.pass_obj
def inspect(obj: Any, name, network, output, template) -> None:
    """Show a service and the endpoints it sends to."""
    svc = obj.muslin.find_service(name, network)
    data = view(svc)

    def human() -> None:
        fields([("name", data["name"]), ("network", data["network"]), ("vip", data["vip"]),
                ("ports", " ".join(data["ports"])),
                ("selector", ", ".join(f"{k}={v}" for k, v in data["selector"].items())),
                ("namespace", data["namespace"]), ("affinity", f"{data['affinity']} s" if data["affinity"] else ""),
                ("origin", data["origin"].removeprefix("cluster:") or "this host"), ("endpoints", data["endpoints"])])
        if svc.backends:
            click.echo()
            table(["ENDPOINT", "ADDRESS", "HOST"],
                  [[b.endpoint, str(b.ip), b.host or "(this host)"] for b in svc.backends])

    emit_one(data, output, template, human)


@service.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("--network", default=None, help="The services' network (when a name is on several).")
@click.pass_obj
def rm(obj: Any, names, network) -> None:
    """Remove services (each one; the exit status is the first failure's)."""
    each(names, lambda n: obj.muslin.remove_service(n, network))

"""`muslin policy ...` and `muslin namespace ...`: network policy in Kubernetes'
NetworkPolicy shape, and namespaces with labels (control/policy.py does the work).

Both groups use this host's store, or with `--cluster-store URL` (MUSLIN_CLUSTER_STORE, or
`cluster-store` in muslind's config file) the cluster's, which every host of a cluster
network follows."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click

from muslin.cli.muslind import load_config, setting_options
from muslin.cli.output import emit_list, fill, table
from muslin.control.settings import DAEMON, DEFAULT_CONFIG, ETCD
from muslin.model.errors import Invalid

FORMATS = click.Choice(["table", "json", "yaml"])


def _store_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = setting_options(ETCD)(f)
    f = click.option("--cluster-store", "cluster_store", default=None, envvar="MUSLIN_CLUSTER_STORE",
                     show_envvar=True, metavar="URL",
                     help="keep the objects in this cluster store (etcd://, etcds://) instead of this host's "
                          f"(default: cluster-store of {DEFAULT_CONFIG} when it has one)")(f)
    return f


class _Target:
    """The Muslin of the host and, with a cluster store, that store."""

    def __init__(self, ctx: click.Context, values: dict[str, Any]) -> None:
        self.ctx = ctx
        url = values.pop("cluster_store")
        if url is None:  # muslind's config file of this host names its cluster store
            conf = load_config(DEFAULT_CONFIG, DAEMON, False)
            url = conf.get("cluster_store", "")
            for s in ETCD:
                if values.get(s.dest) in ("", None) and s.dest in conf:
                    values[s.dest] = conf[s.dest]
        self.url = url or ""
        self.values = values
        self._store: Any = None

    @property
    def muslin(self) -> Any:
        return self.ctx.find_root().obj.muslin

    @property
    def store(self) -> Any:
        """The cluster store, or None for this host's."""
        if self.url and self._store is None:
            from types import SimpleNamespace

            from muslin.control.policy import open_store

            self._store = open_store(self.url, SimpleNamespace(**self.values))
        return self._store


def _emit(data: Any, output: str) -> None:
    if output == "yaml":
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())
    else:
        click.echo(json.dumps(data, indent=2, default=str))


# -- policy --------------------------------------------------------------------------------------

@click.group("policy")
@_store_options
@click.pass_context
def policy(ctx: click.Context, **values: Any) -> None:
    """Network policy: Kubernetes NetworkPolicy objects (networking.k8s.io/v1), as they are."""
    ctx.meta["muslin.target"] = _Target(ctx, values)


def _target() -> _Target:
    return click.get_current_context().meta["muslin.target"]


def _read(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(), "stdin"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except OSError as e:
        raise Invalid(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise Invalid(f"{path}: not UTF-8 text") from None


NS_OPTION = click.option("-n", "--namespace", default="default", show_default=True,
                         help="the namespace of policies that name none")


@policy.command("apply")
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE",
              help="YAML or JSON, several documents ('---') or a List; '-' reads stdin (repeatable)")
@NS_OPTION
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def policy_apply(files: tuple[str, ...], namespace: str, output: str) -> None:
    """Create or update policies (each checked whole before any is written)."""
    from muslin.control import policy as uc
    from muslin.model.policy import load_documents

    docs: list[Any] = []
    sources = []
    for f in files:
        text, source = _read(f)
        docs += load_documents(text, source)
        sources.append(source)
    t = _target()
    done = uc.apply(t.muslin, docs, t.store, namespace, ", ".join(sources))
    if output == "json":
        click.echo(json.dumps([{"policy": a.key, "status": a.status} for a in done], indent=2))
        return
    for a in done:
        click.echo(f"policy {a.key} {a.status}")


def _selector_text(sel: Any) -> str:
    from muslin.model.policy import selector_of

    try:
        return selector_of(sel).describe()
    except Invalid:
        return "?"


@policy.command("ls")
@click.option("-n", "--namespace", default="", help="only this namespace (default: all)")
@click.option("-q", "--quiet", is_flag=True, help="only NAMESPACE/NAME, one per line")
@click.option("--format", "template", default="", metavar="TEMPLATE")
@click.option("-o", "--output", type=FORMATS, default="table", show_default=True)
def policy_ls(namespace: str, quiet: bool, template: str, output: str) -> None:
    """List policies."""
    from muslin.control import policy as uc

    t = _target()
    items = uc.list_policies(t.muslin, t.store, namespace)
    if output == "yaml":
        _emit({"apiVersion": "v1", "kind": "List", "items": items}, "yaml")
        return
    rows = [{"name": f"{i['metadata']['namespace']}/{i['metadata']['name']}", **i} for i in items]
    emit_list(rows, output, quiet, template, ["NAMESPACE", "NAME", "POD-SELECTOR", "TYPES"],
              lambda i: [i["metadata"]["namespace"], i["metadata"]["name"], _selector_text(i["spec"]["podSelector"]),
                         ",".join(i["spec"].get("policyTypes", []))])


@policy.command("get")
@click.argument("name")
@NS_OPTION
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.option("--format", "template", default="", metavar="TEMPLATE")
def policy_get(name: str, namespace: str, output: str, template: str) -> None:
    """Show one policy (NAME or NAMESPACE/NAME) as Kubernetes stores it."""
    from muslin.control import policy as uc

    t = _target()
    ns, n = uc.split_key(name, namespace)
    doc = uc.get(t.muslin, ns, n, t.store)
    if template:
        click.echo(fill(template, doc))
    else:
        _emit(doc, output)


@policy.command("delete")
@click.argument("names", nargs=-1)
@NS_OPTION
@click.option("-f", "--filename", "files", multiple=True, metavar="FILE", help="the policies a file names")
@click.option("--ignore-not-found", is_flag=True, help="a policy that is not there is no error")
def policy_delete(names: tuple[str, ...], namespace: str, files: tuple[str, ...], ignore_not_found: bool) -> None:
    """Delete policies (NAME or NAMESPACE/NAME)."""
    from muslin.control import policy as uc
    from muslin.model.policy import load_documents

    targets = [uc.split_key(n, namespace) for n in names]
    for f in files:
        text, source = _read(f)
        targets += [(p.namespace, p.name) for p in uc.parse_all(load_documents(text, source), namespace, source)]
    if not targets:
        raise Invalid("policy delete: give NAMEs or -f FILE")
    t = _target()
    for key in uc.delete(t.muslin, targets, t.store, ignore_not_found):
        click.echo(f"policy {key} deleted")


@policy.command("explain")
@click.argument("src")
@click.argument("dst")
@click.option("--port", default="", metavar="PORT[/PROTO]", help="80/tcp, 53/udp, icmp (default: any)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def policy_explain(src: str, dst: str, port: str, output: str) -> None:
    """Would a new connection SRC -> DST be allowed, and by which policy and rule?

    SRC and DST: an endpoint's name, NAMESPACE/NAME, a sandbox or an address. Exit status 0
    when allowed, 1 when denied."""
    from muslin.control import policy as uc

    t = _target()
    r = uc.explain(t.muslin, src, dst, port)
    if output == "json":
        click.echo(json.dumps(r, indent=2))
    else:
        click.echo(f"{src} ({r['source']}) -> {dst} ({r['destination']}) {r['port']}: "
                   f"{'allowed' if r['allowed'] else 'denied'}")
        for d in ("egress", "ingress"):
            v = r[d]
            who = v["endpoint"] or (r["source"] if d == "egress" else r["destination"])
            if not v["isolated"]:
                click.echo(f"  {d} of {who}: not isolated ({v['reason']})")
            elif v["allowed_by"]:
                click.echo(f"  {d} of {who}: isolated by {', '.join(v['policies'])}; allowed by "
                           f"{'; '.join(v['allowed_by'])}")
            else:
                click.echo(f"  {d} of {who}: isolated by {', '.join(v['policies'])}; no rule of them allows it")
    if not r["allowed"]:
        sys.exit(1)


@policy.command("stats")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def policy_stats(output: str) -> None:
    """Packets dropped by each policy (at the endpoints it isolates) on this host, and frames
    dropped by anti-spoofing."""
    from muslin.control import policy as uc

    r = uc.drop_counters(_target().muslin)
    if output == "json":
        click.echo(json.dumps(r, indent=2))
        return
    table(["POLICY", "INGRESS-DROPPED", "EGRESS-DROPPED"],
          [[k, v["ingress"], v["egress"]] for k, v in sorted(r["policies"].items())])
    spoofed = sum(r["spoofing"].values())
    click.echo(f"anti-spoofing: {spoofed} frames dropped")


# -- namespace -------------------------------------------------------------------------------------

@click.group("namespace")
@_store_options
@click.pass_context
def namespace(ctx: click.Context, **values: Any) -> None:
    """Namespaces: where endpoints and policies belong, with labels (namespaceSelector)."""
    ctx.meta["muslin.target"] = _Target(ctx, values)


@namespace.command("label")
@click.argument("name")
@click.argument("changes", nargs=-1, required=True, metavar="KEY=VALUE|KEY-...")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def namespace_label(name: str, changes: tuple[str, ...], output: str) -> None:
    """Set (KEY=VALUE) or remove (KEY-) labels of namespace NAME."""
    from muslin.control import policy as uc
    from muslin.model.names import parse_label_changes

    sets, drops = parse_label_changes(changes)
    t = _target()
    now = uc.label_namespace(t.muslin, name, sets, drops, t.store)
    if output == "json":
        click.echo(json.dumps(now, indent=2))
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in sorted(now.items())))


@namespace.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="only the names")
@click.option("--format", "template", default="", metavar="TEMPLATE")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def namespace_ls(quiet: bool, template: str, output: str) -> None:
    """List namespaces: those with labels, and those endpoints and policies name."""
    from muslin.control import policy as uc

    t = _target()
    items = uc.list_namespaces(t.muslin, t.store)
    emit_list(items, output, quiet, template, ["NAME", "LABELS", "ENDPOINTS", "POLICIES"],
              lambda i: [i["name"], ",".join(f"{k}={v}" for k, v in sorted(i["labels"].items())),
                         i["endpoints"], i["policies"]])

"""The `muslind` command line: every setting of control/settings.py as a flag, an
environment variable and a key of the config file (--config, default
/etc/muslin/muslind.toml when it exists); then control/daemon.py serves."""

from __future__ import annotations

import os
import tomllib
from types import SimpleNamespace
from typing import Any, Callable

import click

from muslin.cli.guard import run, version_option
from muslin.control.settings import DAEMON, DEFAULT_CONFIG, Setting, check_config
from muslin.model.errors import Invalid


def click_type(s: Setting) -> Any:
    if isinstance(s.kind, tuple):
        return click.Choice(s.kind)
    return {str: click.STRING, int: click.INT, float: click.FLOAT}.get(s.kind, click.STRING)


def metavar(s: Setting) -> str | None:
    if s.name.endswith(("-socket", "-dir", "-file")) or s.name in ("etcd-ca", "etcd-cert", "etcd-key"):
        return "PATH"
    if s.name.endswith("store"):
        return "URL"
    return {"hostname": "NAME", "cluster-network": "NAME", "etcd-user": "NAME", "underlay-dev": "LINK",
            "underlay-ip": "ADDRESS",
            "metrics-address": "HOST:PORT"}.get(s.name) or ("SECONDS" if s.kind is float else None)


def setting_options(settings: list[Setting]) -> Callable[[Any], Any]:
    """click options for these settings (flag, MUSLIN_<NAME>, default)."""

    def deco(f: Any) -> Any:
        for s in reversed(settings):
            if s.kind is bool:
                opt = click.option(f"--{s.name}", s.dest, is_flag=True, default=s.default, envvar=s.envvar,
                                   show_envvar=True, help=s.help)
            else:
                opt = click.option(f"--{s.name}", s.dest, type=click_type(s), default=s.default,
                                   envvar=s.envvar, show_envvar=True, help=s.help, metavar=metavar(s),
                                   show_default=not callable(s.default) and s.default not in ("", None))
            f = opt(f)
        return f

    return deco


def load_config(path: str, settings: list[Setting], required: bool) -> dict[str, Any]:
    """The config file as {dest: value} ({} when it is absent and not required)."""
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise Invalid(f"config file {path}: no such file") from None
        return {}
    except OSError as e:
        raise Invalid(f"config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise Invalid(f"config file {path}: not TOML: {e}") from None
    return check_config(doc, path, settings)


def config_option(settings: list[Setting]) -> Callable[[Any], Any]:
    """--config FILE (MUSLIN_CONFIG): read first, its keys become the defaults of the other options."""

    def load(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
        required = value is not None
        path = value if value is not None else DEFAULT_CONFIG
        ctx.default_map = {**(ctx.default_map or {}), **load_config(path, settings, required)}
        return path

    return click.option("--config", "config", default=None, envvar="MUSLIN_CONFIG", show_envvar=True,
                        is_eager=True, expose_value=True, callback=load, metavar="FILE",
                        help=f"config file (TOML, keys = the long options; default {DEFAULT_CONFIG} if it "
                             "exists; '' for none)")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@version_option()
@config_option(DAEMON)
@setting_options(DAEMON)
def muslind(config: str, **values: Any) -> int:
    """muslind: the Muslin host agent. It serves the Docker network and IPAM plugin, the CNI
    agent socket muslin-cni hands its requests to, and, with --cluster-store and
    --cluster-network, this host's cluster agent. Under systemd it signals READY when its
    sockets answer and takes the CNI socket systemd passes (socket activation).

    SIGTERM/SIGINT stop (the cluster agent keeps its lease and the kernel as it is); SIGUSR1
    leaves the cluster network and stops."""
    for s in DAEMON:  # a callable default (the host name) is computed now
        if callable(values.get(s.dest)):
            values[s.dest] = values[s.dest]()
    args = SimpleNamespace(config=config, **values)
    if bool(args.cluster_store) != bool(args.cluster_network):
        raise Invalid("--cluster-store and --cluster-network go together")
    from muslin.cli import logs
    from muslin.control import daemon

    logs.setup(args.log_level, args.third_party_log_level, args.log_format, "muslind")
    if args.state_dir:
        os.environ["MUSLIN_STATE_DIR"] = args.state_dir
    status, error = daemon.serve(args)
    if error:
        logs.fatal(error, args.log_format)
    return status


def main(argv: list[str] | None = None) -> None:
    run(muslind, argv, prog_name="muslind")


if __name__ == "__main__":
    main()

"""muslind's settings, in one table: each is a long option `--NAME`, an environment variable
`MUSLIN_NAME` and a key `NAME` of the config file (/etc/muslin/muslind.toml). A value given
as a flag wins over the environment, which wins over the file, which wins over the default.

The command line (cli/muslind.py), the config file `muslin install` writes
(cli/installer.py) and the cluster commands (control/agent_cli.py) are all made from
this table, so a new setting is one entry here (and a new service one class in
control/daemon.py that reads `args.<name with _>`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from muslin.model.errors import Invalid

DEFAULT_CONFIG = "/etc/muslin/muslind.toml"
DEFAULT_DOCKER_SOCKET = "/run/docker/plugins/muslin.sock"
DEFAULT_AGENT_SOCKET = "/run/muslin/muslind.sock"
DEFAULT_STATE_DIR = "/var/lib/muslin"
LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Setting:
    name: str  # the option without its dashes, and the config file's key
    kind: Any  # str, int, float, bool (a flag) or a tuple of choices
    default: Any  # a value, or a callable giving it when muslind starts
    help: str
    group: str = "muslind"

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def envvar(self) -> str:
        return "MUSLIN_" + self.name.upper().replace("-", "_")

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def shown_default(self) -> str:
        """The default as the config file comments show it."""
        if callable(self.default):
            return "(this host's name)" if self.name == "hostname" else "(computed)"
        return repr(self.default)


def _hostname() -> str:
    return socket.gethostname()


LOGGING = [
    Setting("log-level", LEVELS, "info", "level of Muslin's own log records"),
    Setting("third-party-log-level", LEVELS, "warning", "level of the libraries' loggers (pyroute2, ...)"),
    Setting("log-format", LOG_FORMATS, "text",
            "text: one line per record (under journald with its priority, without a timestamp); "
            "json: one JSON object per line"),
]

ETCD = [
    Setting("etcd-ca", str, "", "CA file that signed etcd's certificates (etcds://; default: the system's CAs)", "etcd"),
    Setting("etcd-cert", str, "", "client certificate file, for etcd's --client-cert-auth", "etcd"),
    Setting("etcd-key", str, "", "the client certificate's key file", "etcd"),
    Setting("etcd-user", str, "", "etcd user (authentication enabled in etcd)", "etcd"),
    Setting("etcd-password-file", str, "",
            "file holding the etcd user's password (or the environment's MUSLIN_ETCD_PASSWORD)", "etcd"),
]

CLUSTER = [
    Setting("cluster-store", str, "", "cluster store URL: etcd://h1:2379[,h2:2379] or etcds://... (TLS)",
            "cluster"),
    Setting("cluster-network", str, "", "the cluster network this host joins", "cluster"),
    Setting("hostname", str, _hostname, "this host's name in the cluster (unique per cluster)", "cluster"),
    Setting("underlay-dev", str, "", "underlay link (default: the default route's)", "cluster"),
    Setting("underlay-ip", str, "", "underlay address (default: the underlay link's first)", "cluster"),
    Setting("resync", float, 10.0, "seconds between full resyncs of the cluster agent", "cluster"),
    Setting("leave", bool, False, "give the subnet back when muslind stops (SIGTERM/SIGINT)", "cluster"),
]

def _docker_api() -> str:
    """dockerd's API socket: $DOCKER_HOST when it names a unix socket, else Docker's default."""
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://"):] if host.startswith("unix://") else "/var/run/docker.sock"


DNS = [
    Setting("dns-port", int, 53, "port of the DNS server on each bridge network's gateway (0 disables DNS)", "dns"),
    Setting("resolv-conf", str, "/etc/resolv.conf",
            "where the upstream resolvers are listed (at most 3 used; re-read when it changes)", "dns"),
    Setting("dns-handover", float, 60.0,
            "seconds a holder keeps the DNS sockets for the next muslind after a stop (0: no holder)", "dns"),
]

DAEMON = [
    Setting("docker-socket", str, DEFAULT_DOCKER_SOCKET, "Docker plugin socket ('' disables the Docker plugin)"),
    Setting("agent-socket", str, DEFAULT_AGENT_SOCKET,
            "CNI agent socket ('' disables the agent); a socket systemd passes for this path is used as it is"),
    Setting("docker-api", str, _docker_api,
            "dockerd's API socket, asked for containers' names and aliases ('' = never ask; default "
            "$DOCKER_HOST's unix socket or /var/run/docker.sock)"),
    Setting("state-dir", str, "", f"state directory (default {DEFAULT_STATE_DIR})"),
    Setting("store", str, "", "store URL (etcd://, etcds://, a .db path); default: the state directory's"),
    Setting("reap-delay", float, 0.05,
            "seconds a DEL's retired veth waits for others to be deleted with it in one message"),
    Setting("reconcile-interval", float, 10.0,
            "seconds between orphan cleanups and firewall hook checks (0 = only at start)"),
    Setting("metrics-address", str, "",
            "HOST:PORT to serve Prometheus metrics at /metrics and the topology page at /topology "
            "(e.g. 127.0.0.1:9473; '' = off)"),
    *LOGGING,
    *CLUSTER,
    *DNS,
    *ETCD,
]

BY_NAME = {s.name: s for s in DAEMON}


def check_config(doc: dict[str, Any], path: str, settings: list[Setting] = DAEMON) -> dict[str, Any]:
    """The config file's keys -> {dest: value}; an unknown key or a value of the wrong type is
    Invalid, naming the file and the key."""
    known = {s.name: s for s in settings}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        s = known.get(key)
        if s is None:
            near = [k for k in known if k.replace("-", "_") == key or key in k]
            raise Invalid(f"{path}: unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else
                                                            f" (known: {', '.join(sorted(known))})"))
        out[s.dest] = check_value(s, value, path)
    return out


def check_value(s: Setting, value: Any, path: str) -> Any:
    where = f"{path}: {s.name}"
    if isinstance(s.kind, tuple):
        if value not in s.kind:
            raise Invalid(f"{where}: {value!r} is not one of {', '.join(s.kind)}")
        return value
    if s.kind is bool:
        if not isinstance(value, bool):
            raise Invalid(f"{where}: {value!r} is not true or false")
        return value
    if s.kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (s.kind is int and not
                                                                                  isinstance(value, int)):
            raise Invalid(f"{where}: {value!r} is not a number")
        return s.kind(value)
    if not isinstance(value, str):
        raise Invalid(f"{where}: {value!r} is not a string")
    return value


def etcd_options(args: Any) -> Any:
    """EtcdOptions from parsed settings (attributes etcd_ca, ..., etcd_password_file); the
    password from its file, else $MUSLIN_ETCD_PASSWORD."""
    from muslin.store.base import EtcdOptions

    password = ""
    pw_file = getattr(args, "etcd_password_file", "") or ""
    if pw_file:
        try:
            password = Path(pw_file).read_text().rstrip("\r\n")
        except OSError as e:
            raise Invalid(f"etcd password file {pw_file}: {e.strerror}") from None
        if not password:
            raise Invalid(f"etcd password file {pw_file} is empty")
    elif getattr(args, "etcd_user", ""):
        password = os.environ.get("MUSLIN_ETCD_PASSWORD", "")
    return EtcdOptions(ca=args.etcd_ca or "", cert=args.etcd_cert or "", key=args.etcd_key or "",
                       user=args.etcd_user or "", password=password)


def render_toml(values: dict[str, Any], settings: list[Setting] = DAEMON) -> str:
    """A config file: the given values set, every other setting commented with its default."""
    lines = ["# muslind's configuration (muslind --help lists each setting; a flag or MUSLIN_<NAME>",
             "# in the environment overrides a key here)."]
    group = ""
    for s in settings:
        if s.group != group:
            group = s.group
            lines += ["", f"# -- {group} --"]
        lines.append(f"# {s.help}")
        if s.dest in values:
            lines.append(f"{s.name} = {_toml(values[s.dest])}")
        else:
            lines.append(f"# {s.name} = {s.shown_default() if callable(s.default) else _toml(s.default)}")
    return "\n".join(lines) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    import json
    return json.dumps(str(v))  # a TOML basic string is a JSON string for these values

"""What `muslin install` / `muslin uninstall` (cli/install.py) do: the plugins, muslind's config and systemd units, an
optional CNI conflist and shell completion, written under a root directory (like DESTDIR:
the files land under ROOT, what they say is the target system's paths), and removed again
exactly.

Install checks everything first, then writes each file as one step of a plan (its undo
removes it and the directories it made), and records what it wrote (sha256 per file, the
directories it made) in <ROOT>/etc/muslin/install-manifest.json. A file that is there and
was not written by muslin install, or was changed since, is never overwritten: the install
is refused before anything is written. Uninstall removes the files whose content is still
what install wrote (a changed one is kept, and stays in the manifest, unless forced), then
the manifest, then the directories install made that are empty.

Layouts (docs/install.md): `local` (default; CNI's /opt/cni/bin, admin units in
/etc/systemd/system) and `debian` (what a Debian package would ship: /usr/lib/cni, units in
/lib/systemd/system, completions under /usr/share).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from muslin.control.settings import (BY_NAME, DEFAULT_AGENT_SOCKET, DEFAULT_CONFIG, DEFAULT_STATE_DIR, check_value,
                                     render_toml)
from muslin.model.errors import Conflict, Invalid, NotFound
from muslin.plan import Step, run

MANIFEST = "/etc/muslin/install-manifest.json"
SHELLS = ("bash", "zsh", "fish")


@dataclass(frozen=True)
class Layout:
    cni_bin: str
    cni_conf: str
    units: str
    completions: dict[str, str]
    default_shells: tuple[str, ...]


LAYOUTS = {
    "local": Layout("/opt/cni/bin", "/etc/cni/net.d", "/etc/systemd/system",
                    {"bash": "/etc/bash_completion.d/muslin", "zsh": "/usr/local/share/zsh/site-functions/_muslin",
                     "fish": "/etc/fish/completions/muslin.fish"}, ("bash",)),
    "debian": Layout("/usr/lib/cni", "/etc/cni/net.d", "/lib/systemd/system",
                     {"bash": "/usr/share/bash-completion/completions/muslin",
                      "zsh": "/usr/share/zsh/vendor-completions/_muslin",
                      "fish": "/usr/share/fish/vendor_completions.d/muslin.fish"}, SHELLS),
}


@dataclass
class Options:
    root: str = "/"
    layout: str = "local"
    cni_bin_dir: str = ""
    cni_conf_dir: str = ""
    cni_network: str = ""
    subnets: tuple[str, ...] = ()
    cluster_network: str = ""
    state_dir: str = DEFAULT_STATE_DIR
    agent_socket: str = DEFAULT_AGENT_SOCKET
    settings: tuple[str, ...] = ()  # KEY=VALUE for muslind.toml
    muslind: str = ""  # ExecStart (default: the muslind next to this interpreter)
    native: str = ""  # the native forwarder (default: <prefix>/lib/muslin-fwd)
    python_entry: bool = False  # the Python entry even where a native forwarder exists
    python: str = ""  # the Python entry's interpreter (default: this one)
    completions: tuple[str, ...] | None = None  # None: the layout's default


@dataclass(frozen=True)
class File:
    path: str  # the target path (without the root)
    content: bytes
    mode: int
    what: str


@dataclass
class Plan:
    files: list[File] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- what to write ---------------------------------------------------------------------

def _abs(what: str, p: str) -> str:
    if not p.startswith("/"):
        raise Invalid(f"{what} {p!r} is not an absolute path")
    return os.path.normpath(p)


def muslind_command(o: Options) -> str:
    if o.muslind:
        return _abs("--muslind", o.muslind)
    exe = Path(sys.executable).parent / "muslind"
    return str(exe) if exe.exists() else f"{sys.executable} -m muslin.control.daemon"


def native_forwarder(o: Options) -> tuple[bytes | None, str]:
    """(the forwarder's bytes, how it was picked) or (None, why the Python entry is used)."""
    if o.python_entry:
        return None, "the Python entry, as asked (--python-entry)"
    path = Path(o.native) if o.native else Path(sys.prefix) / "lib" / "muslin-fwd"
    if not path.is_file():
        return None, (f"the Python entry: no native forwarder at {path} (scripts/setup.sh builds it where a C "
                      "compiler exists); each call starts an interpreter")
    data = path.read_bytes()
    flags = Path(str(path) + ".flags")
    m = re.search(r'-DMUSLIN_PY_DIR="([^"]+)"', flags.read_text()) if flags.is_file() else None
    py_dir = m.group(1) if m else ""
    missing = [n for n in ("muslin-cni-py", "muslin-ipam-py") if not py_dir or not (Path(py_dir) / n).exists()]
    if missing:
        return None, (f"the Python entry: the native forwarder {path} falls back to {py_dir or '?'}/{missing[0]}, "
                      "which is missing")
    return data, f"the native forwarder {path} (falls back to {py_dir}/muslin-cni-py when muslind does not answer)"


def python_entry(plugin: str, python: str) -> bytes:
    fn = "main" if plugin == "cni" else "main_ipam"
    return (f"#!{python}\n# muslin-{plugin}, the Python entry (written by muslin install)\n"
            f"from muslin.cni.entry import {fn}\n{fn}()\n").encode()


def conflist(o: Options) -> tuple[str, dict[str, Any]] | None:
    from muslin.model.names import check_name

    if o.cni_network and o.cluster_network:
        raise Invalid("--cni-network and --cluster-network: give one (a conflist per network)")
    common: dict[str, Any] = {"dataDir": o.state_dir, "capabilities": {"portMappings": True}}
    if o.agent_socket != DEFAULT_AGENT_SOCKET:
        common["agentSocket"] = o.agent_socket
    if o.cluster_network:
        check_name(o.cluster_network)
        plugin = {"type": "muslin-cni", "network": o.cluster_network, **common}
        return o.cluster_network, {"cniVersion": "1.0.0", "name": o.cluster_network, "plugins": [plugin]}
    if not o.cni_network:
        if o.subnets:
            raise Invalid("--subnet is for --cni-network NAME")
        return None
    check_name(o.cni_network)
    if not o.subnets:
        raise Invalid(f"--cni-network {o.cni_network} needs --subnet CIDR (repeat for dual stack)")
    ranges, routes = [], []
    for s in o.subnets:
        try:
            net = ipaddress.ip_network(s)
        except ValueError as e:
            raise Invalid(f"--subnet {s!r}: {e}") from None
        ranges.append([{"subnet": str(net)}])
        routes.append({"dst": "0.0.0.0/0" if net.version == 4 else "::/0"})
    from muslin.model.names import bridge_name
    plugin = {"type": "muslin-cni", "bridge": bridge_name(o.cni_network), "isGateway": True,
              "isDefaultGateway": True, "ipMasq": True,
              "ipam": {"type": "muslin-ipam", "ranges": ranges, "routes": routes}, **common}
    return o.cni_network, {"cniVersion": "1.0.0", "name": o.cni_network, "plugins": [plugin]}


def config_values(o: Options) -> dict[str, Any]:
    values: dict[str, Any] = {"state_dir": o.state_dir}
    if o.agent_socket != DEFAULT_AGENT_SOCKET:
        values["agent_socket"] = o.agent_socket
    if o.cluster_network:
        values["cluster_network"] = o.cluster_network
    for kv in o.settings:
        key, sep, raw = kv.partition("=")
        s = BY_NAME.get(key.strip())
        if not sep or s is None:
            raise Invalid(f"--set {kv!r}: use KEY=VALUE with a muslind setting as KEY "
                          f"(known: {', '.join(sorted(BY_NAME))})")
        values[s.dest] = check_value(s, _parse_value(s, raw.strip()), "--set")
    if values.get("cluster_network") and not values.get("cluster_store"):
        raise Invalid("--cluster-network needs the cluster store: --set cluster-store=etcd://HOST:PORT[,...] "
                      "(or etcds:// with --set etcd-ca=... etc.)")
    return values


def _parse_value(s: Any, raw: str) -> Any:
    if s.kind is bool:
        return {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}.get(raw.lower(), raw)
    if s.kind in (int, float):
        try:
            return s.kind(raw)
        except ValueError:
            return raw
    return raw


SOCKET_UNIT = """\
# muslind's CNI agent socket, written by muslin install (docs/install.md). systemd holds it
# from boot: muslin-cni's requests wait here until muslind (started by the first one) answers.
[Unit]
Description=Muslin CNI agent socket
PartOf=muslind.service

[Socket]
ListenStream={socket}
SocketMode=0600
DirectoryMode=0755
RemoveOnStop=yes
FileDescriptorName=cni
Service=muslind.service

[Install]
WantedBy=sockets.target
"""

SERVICE_UNIT = """\
# muslind, written by muslin install (docs/install.md). Settings: {config}
# (every key is also a flag and a MUSLIN_* variable). Type=notify: READY once its sockets
# answer. KillMode=process: a stop or restart leaves the kernel state and the bgp backend's
# BIRD running, so traffic goes on (`muslin cluster leave` gives a host's subnet back).
[Unit]
Description=Muslin container networking agent (CNI agent, Docker network plugin, cluster agent)
Documentation=file:/usr/share/doc/muslin/install.md
Requires=muslind.socket
After=muslind.socket network-online.target
Wants=network-online.target
Before=docker.service containerd.service

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec} --config {config}
Restart=on-failure
RestartSec=2s
TimeoutStartSec=90s
TimeoutStopSec=90s
KillMode=process
StandardOutput=journal
StandardError=journal
SyslogIdentifier=muslind
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
Also=muslind.socket
"""


def plan(o: Options) -> Plan:
    """Every file install would write, checked, and nothing written yet."""
    if o.layout not in LAYOUTS:
        raise Invalid(f"unknown --layout {o.layout!r}: expected one of {', '.join(LAYOUTS)}")
    lay = LAYOUTS[o.layout]
    o.state_dir = _abs("--state-dir", o.state_dir)
    o.agent_socket = _abs("--agent-socket", o.agent_socket)
    bin_dir = _abs("--cni-bin-dir", o.cni_bin_dir or lay.cni_bin)
    conf_dir = _abs("--cni-conf-dir", o.cni_conf_dir or lay.cni_conf)
    p = Plan()
    native, how = native_forwarder(o)
    python = o.python or sys.executable
    for plugin in ("cni", "ipam"):
        content = native if native is not None else python_entry(plugin, python)
        p.files.append(File(f"{bin_dir}/muslin-{plugin}", content, 0o755, f"CNI plugin: {how.split(' (')[0]}"))
    p.notes.append(f"muslin-cni and muslin-ipam: {how}")
    values = config_values(o)
    p.files.append(File(DEFAULT_CONFIG, render_toml(values).encode(), 0o644, "muslind's settings"))
    p.files.append(File(f"{lay.units}/muslind.socket", SOCKET_UNIT.format(socket=o.agent_socket).encode(), 0o644,
                        "systemd socket unit (socket activation of the CNI socket)"))
    p.files.append(File(f"{lay.units}/muslind.service",
                        SERVICE_UNIT.format(exec=muslind_command(o), config=DEFAULT_CONFIG).encode(), 0o644,
                        "systemd service unit (Type=notify)"))
    net = conflist(o)
    if net is not None:
        name, doc = net
        p.files.append(File(f"{conf_dir}/{name}.conflist", (json.dumps(doc, indent=2) + "\n").encode(), 0o644,
                            f"CNI network {name}"))
    shells = lay.default_shells if o.completions is None else o.completions
    for sh in shells:
        if sh not in SHELLS:
            raise Invalid(f"--completion {sh!r}: expected {', '.join(SHELLS)}")
        from muslin.cli.completion import script  # the one source of the scripts
        p.files.append(File(lay.completions[sh], script(sh).encode(), 0o644, f"{sh} completion"))
    return p


# -- the manifest and the checks ---------------------------------------------------------

def under(root: str, path: str) -> Path:
    return Path(root) / path.lstrip("/")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(root: str) -> dict[str, Any]:
    p = under(root, MANIFEST)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        return {"files": {}, "dirs": []}
    except (OSError, ValueError) as e:
        raise Invalid(f"{p} is damaged: {e}") from None
    return {"files": dict(doc.get("files", {})), "dirs": list(doc.get("dirs", []))}


def _current(path: Path) -> str | None:
    try:
        return sha256(path.read_bytes())
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return "directory"


def check(root: str, p: Plan, manifest: dict[str, Any]) -> list[File]:
    """The files that need writing; Conflict for any that is not ours or was changed."""
    todo = []
    for f in p.files:
        path = under(root, f.path)
        have = _current(path)
        want = sha256(f.content)
        ours = manifest["files"].get(f.path, {}).get("sha256")
        if have is None:
            todo.append(f)
        elif have == "directory":
            raise Conflict(f"{path} is a directory")
        elif ours is None:
            raise Conflict(f"{path} exists and was not written by muslin install (nothing was changed; remove it, "
                           "or choose another directory)")
        elif have != ours:
            raise Conflict(f"{path} was changed since muslin install wrote it (nothing was changed; keep your "
                           "version by not installing it, or remove it first)")
        elif have != want or (path.stat().st_mode & 0o7777) != f.mode:
            todo.append(f)
    return todo


# -- writing ---------------------------------------------------------------------------

def _mkdirs(d: Path) -> list[Path]:
    """Make d and its missing parents; return the ones made, outermost first."""
    made = []
    cur = d
    while not cur.exists():
        made.append(cur)
        cur = cur.parent
    for m in reversed(made):
        m.mkdir(mode=0o755)
        os.chmod(m, 0o755)
    return list(reversed(made))


def _write_step(root: str, f: File, manifest: dict[str, Any]) -> Step:
    path = under(root, f.path)

    def apply() -> tuple[list[Path], bytes | None, int | None]:
        made = _mkdirs(path.parent)
        old = path.read_bytes() if path.exists() else None
        mode = path.stat().st_mode & 0o7777 if old is not None else None
        tmp = path.with_name(f".{path.name}.muslin-tmp")
        tmp.write_bytes(f.content)
        os.chmod(tmp, f.mode)
        os.replace(tmp, path)
        manifest["files"][f.path] = {"sha256": sha256(f.content), "what": f.what}
        for m in made:
            rel = "/" + str(m.relative_to(root)).lstrip("/") if root != "/" else str(m)
            if rel not in manifest["dirs"]:
                manifest["dirs"].append(rel)
        return made, old, mode

    def undo(r: tuple[list[Path], bytes | None, int | None]) -> None:
        made, old, mode = r
        if old is None:
            path.unlink(missing_ok=True)
            manifest["files"].pop(f.path, None)
        else:  # a file of ours, rewritten: as it was
            path.write_bytes(old)
            os.chmod(path, mode or f.mode)
        for m in reversed(made):
            try:
                m.rmdir()
            except OSError:
                pass

    return Step(f"install {f.path}", apply, undo)


def _save_manifest(root: str, manifest: dict[str, Any], before: bytes | None) -> Step:
    path = under(root, MANIFEST)

    def apply() -> list[Path]:
        made = _mkdirs(path.parent)
        doc = {"version": 1, "files": manifest["files"], "dirs": sorted(manifest["dirs"], key=len)}
        path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.chmod(path, 0o644)
        return made

    def undo(made: list[Path]) -> None:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)
        for m in reversed(made):
            try:
                m.rmdir()
            except OSError:
                pass

    return Step("install manifest", apply, undo)


def install(o: Options) -> tuple[Plan, list[File]]:
    """Check, then write what is missing or out of date; returns (the plan, the files written)."""
    root = o.root or "/"
    if not Path(root).is_dir():
        raise NotFound(f"--root {root}: no such directory")
    p = plan(o)
    manifest = read_manifest(root)
    before_path = under(root, MANIFEST)
    before = before_path.read_bytes() if before_path.exists() else None
    todo = check(root, p, manifest)
    if todo or before is None:
        run([*(_write_step(root, f, manifest) for f in todo), _save_manifest(root, manifest, before)])
    return p, todo


def uninstall(root: str = "/", force: bool = False) -> tuple[list[str], list[str]]:
    """Remove what install wrote: (removed paths, kept paths: changed since install)."""
    root = root or "/"
    manifest = read_manifest(root)
    mpath = under(root, MANIFEST)
    if not manifest["files"] and not mpath.exists():
        return [], []
    removed, kept = [], []
    for target, info in sorted(manifest["files"].items()):
        path = under(root, target)
        have = _current(path)
        if have is None:
            continue
        if have != info.get("sha256") and not force:
            kept.append(str(path))
            continue
        path.unlink()
        removed.append(str(path))
    keep = {t: i for t, i in manifest["files"].items() if str(under(root, t)) in kept}
    if keep:
        doc = {"version": 1, "files": keep, "dirs": manifest["dirs"]}
        mpath.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return removed, kept
    mpath.unlink(missing_ok=True)
    for d in sorted(manifest["dirs"], key=len, reverse=True):  # deepest first, only when empty
        try:
            under(root, d).rmdir()
        except OSError:
            pass
    return removed, kept


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None

"""The `muslin` command's entry. `muslin policy apply` and `muslin policy delete` are sent to
a running muslind of the same state dir and host namespace when one answers on its agent
socket (MUSLIN_AGENT_SOCKET, else /run/muslin/muslind.sock; control/policy_agent.py), as
muslin-cni's fast path does: no CLI to import (~200 ms of each call), the same use-case run
by muslind, the same output and exit status. Everything else, these commands with options
this parser does not know, with a cluster store (--cluster-store, MUSLIN_CLUSTER_STORE or
muslind's config file), or when no muslind of this state dir answers, runs the CLI
(cli/main.py). Imports only the standard library."""

from __future__ import annotations

import _socket
import json
import os
import sys
from typing import Any

DEFAULT_SOCKET = "/run/muslin/muslind.sock"  # = control/settings.py DEFAULT_AGENT_SOCKET
DEFAULT_CONFIG = "/etc/muslin/muslind.toml"  # = control/settings.py DEFAULT_CONFIG
DEFAULT_STATE_DIR = "/var/lib/muslin"  # = store DEFAULT_STATE_DIR
CONNECT_TIMEOUT = 0.25
ANSWER_TIMEOUT = 300.0
UNAVAILABLE = 7  # MuslinError Unavailable's exit status


def parse(argv: list[str], env: Any = os.environ) -> dict[str, Any] | None:
    """The request `argv` makes, or None when the CLI must run it."""
    state = env.get("MUSLIN_STATE_DIR") or DEFAULT_STATE_DIR
    netns = env.get("MUSLIN_HOST_NETNS") or ""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        a, eq, v = argv[i].partition("=")
        if a not in ("--state-dir", "--host-netns"):
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            v, i = argv[i + 1], i + 1
        i += 1
        if a == "--state-dir":
            state = v
        else:
            netns = v
    if argv[i:i + 1] != ["policy"] or argv[i + 1:i + 2] not in (["apply"], ["delete"]):
        return None
    op, rest = argv[i + 1], argv[i + 2:]
    req: dict[str, Any] = {"op": op, "files": [], "names": [], "namespace": "default", "output": "table",
                           "ignore_not_found": False}
    j = 0
    while j < len(rest):
        a, eq, v = rest[j].partition("=") if rest[j].startswith("--") else (rest[j], "", "")
        if a == "--ignore-not-found" and op == "delete" and not eq:
            req["ignore_not_found"] = True
            j += 1
            continue
        if not a.startswith("-") or a == "-":
            if op != "delete":
                return None
            req["names"].append(rest[j])
            j += 1
            continue
        if a not in ("-f", "--filename", "-n", "--namespace") + (("-o", "--output") if op == "apply" else ()):
            return None
        if not eq:
            if j + 1 >= len(rest):
                return None
            v, j = rest[j + 1], j + 1
        j += 1
        if a in ("-f", "--filename"):
            req["files"].append(v)
        elif a in ("-n", "--namespace"):
            req["namespace"] = v
        elif v in ("table", "json"):
            req["output"] = v
        else:
            return None
    if (op == "apply" and not req["files"]) or req["files"].count("-") > 1:
        return None
    if env.get("MUSLIN_CLUSTER_STORE") or os.path.exists(DEFAULT_CONFIG):
        return None  # the objects may belong in a cluster store: the CLI decides
    try:
        req["state_dir"] = os.path.abspath(state)
        req["netns"] = os.stat(f"/run/netns/{netns}" if netns and "/" not in netns else (netns or "/proc/self/ns/net")).st_ino
    except OSError:
        return None  # the CLI says what is wrong
    return req


class _Agent:
    def __init__(self, path: str) -> None:
        self.s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.s.settimeout(CONNECT_TIMEOUT)
        self.s.connect(path)
        self.s.settimeout(ANSWER_TIMEOUT)
        self.buf = b""

    def ask(self, req: dict[str, Any]) -> dict[str, Any]:
        line = json.dumps({"plugin": "policy", "env": {}, "stdin": json.dumps(req)})
        self.s.sendall(line.encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise OSError("the connection closed")
            self.buf += chunk
        ans, _, self.buf = self.buf.partition(b"\n")
        return json.loads(json.loads(ans)["stdout"])


def _read(path: str) -> tuple[str, str] | None:
    if path == "-":
        return sys.stdin.read(), "stdin"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except (OSError, UnicodeDecodeError):
        return None


def forward(req: dict[str, Any], env: Any = os.environ) -> int | None:
    """Exit status of the forwarded command; None when no muslind of this state dir takes it."""
    path = env.get("MUSLIN_AGENT_SOCKET") or DEFAULT_SOCKET
    if not os.path.exists(path):
        return None
    try:
        agent = _Agent(path)
    except OSError:
        return None
    try:
        try:
            if not agent.ask({**req, "op": "hello", "files": []}).get("mine"):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        named = {f: _read(f) for f in req["files"] if f != "-"}  # first: stdin is read only if all of them are
        if None in named.values():
            return None  # unreadable: the CLI says why (stdin is not read yet)
        files = [list(named[f] if f != "-" else _read(f)) for f in req["files"]]  # type: ignore[arg-type]
        try:
            ans = agent.ask({**req, "files": files})
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: muslind agent at {path} did not answer: {e}", file=sys.stderr)
            return UNAVAILABLE
    finally:
        agent.s.close()
    if "error" in ans:
        print(f"error: {ans['error']}", file=sys.stderr)
        return int(ans.get("status", 1))
    if "applied" in ans:
        if req["output"] == "json":
            print(json.dumps(ans["applied"], indent=2))
        else:
            for a in ans["applied"]:
                print(f"policy {a['policy']} {a['status']}")
    for key in ans.get("deleted", ()):
        print(f"policy {key} deleted")
    return 0


def main() -> None:
    req = parse(sys.argv[1:])
    rc = forward(req) if req is not None else None
    if rc is None:
        from muslin.cli.main import main as cli

        cli()
        return
    sys.stdout.flush()
    sys.exit(rc)

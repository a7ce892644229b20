"""muslind's side of `muslin policy apply|delete` forwarded by the CLI (cli/fast.py): a
request of the agent socket (framing 1, `"plugin": "policy"`, cni/server.py EXTRA) whose
stdin is one JSON object:

  {"op": "hello"|"apply"|"delete", "state_dir": ABS, "netns": INODE,
   "files": [[TEXT, SOURCE]...], "names": [...], "namespace": NS, "ignore_not_found": BOOL}

Answered with one JSON object: {"mine": false} when this muslind has another state dir or
host namespace than the caller (the CLI then does the work itself), {"mine": true} to a
hello, {"applied": [{"policy", "status"}]} / {"deleted": [keys]}, or {"error": LINE,
"status": N} (the CLI's exit status of that error kind). The work is the same use-case the
CLI calls (control/policy.py), on this host's store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from muslin.model.errors import Invalid, MuslinError


def netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def handler(state_dir: Path, make_muslin: Callable[[], Any]) -> Callable[[bytes], tuple[str, int]]:
    mine = str(Path(os.path.abspath(state_dir)))

    def handle(stdin: bytes) -> tuple[str, int]:
        try:
            req = json.loads(stdin or b"{}")
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return json.dumps({"error": f"policy request: not JSON: {e}", "status": Invalid.exit_status}), 0
        if req.get("state_dir") != mine or req.get("netns") != netns_inode():
            return json.dumps({"mine": False}), 0
        if req.get("op") == "hello":
            return json.dumps({"mine": True}), 0
        try:
            return json.dumps(_serve(make_muslin, req)), 0
        except MuslinError as e:
            return json.dumps({"error": str(e), "status": e.exit_status}), 0
        except Exception as e:  # noqa: BLE001 - one line, never a traceback (as the CLI)
            return json.dumps({"error": f"{type(e).__name__}: {e}", "status": 1}), 0

    return handle


def _serve(make_muslin: Callable[[], Any], req: dict[str, Any]) -> dict[str, Any]:
    from muslin.control import policy as uc
    from muslin.model.policy import load_documents

    ns = str(req.get("namespace") or "default")
    files = [(str(t), str(s)) for t, s in req.get("files") or []]
    m = make_muslin()
    try:
        if req.get("op") == "apply":
            docs: list[Any] = []
            for text, source in files:
                docs += load_documents(text, source)
            done = uc.apply(m, docs, None, ns, ", ".join(s for _, s in files))
            return {"applied": [{"policy": a.key, "status": a.status} for a in done]}
        if req.get("op") == "delete":
            targets = [uc.split_key(str(n), ns) for n in req.get("names") or []]
            for text, source in files:
                targets += [(p.namespace, p.name) for p in uc.parse_all(load_documents(text, source), ns, source)]
            if not targets:
                raise Invalid("policy delete: give NAMEs or -f FILE")
            return {"deleted": uc.delete(m, targets, None, bool(req.get("ignore_not_found")))}
        raise Invalid(f"policy request: unknown op {req.get('op')!r}")
    finally:
        m.close()

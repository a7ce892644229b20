"""Without a running muslind (issue 9, item 5), both ways side by side, per round in a fresh
throwaway host namespace with its own state dir and bridge network:

- *in-process*: the installed `muslin-cni` with no agent socket: the native forwarder execs
  the Python entry, which does the ADD itself;
- *socket activation*: `systemd-socket-activate` (systemd's LISTEN_FDS protocol, what the
  installed `muslind.socket` unit does) holds the agent socket; the first ADD makes it exec
  muslind, which answers it on the inherited socket (the cold start is in that call); the
  next ADD is served by the muslind now running;
- *reference*: bridge + host-local, the same calls.

Every call is timed by bench/worker.py inside the host namespace (fork+exec like a runtime).
`python -m bench --only activation` or `python -m bench.activation [--rounds N]` (JSON)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ns import Namespaces, token

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
REF = "/usr/lib/cni"


def _conf(name: str, subnet: str, ref: bool, sock: str = "") -> str:
    ipam = {"type": "host-local" if ref else "muslin-ipam", "ranges": [[{"subnet": subnet}]]}
    c = {"cniVersion": "1.0.0", "name": name, "type": "bridge" if ref else "muslin-cni", "bridge": "br" + name[-6:],
         "isGateway": True, "ipMasq": True, "ipam": ipam}
    if sock:
        c["agentSocket"] = sock
    return json.dumps(c)


def _time(host: str, calls: list[dict]) -> list[float]:
    p = subprocess.run(["ip", "netns", "exec", host, sys.executable, str(HERE / "worker.py")],
                       input=json.dumps({"calls": calls}), capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"bench worker failed: {p.stderr.strip()[-500:]}")
    ans = json.loads(p.stdout)
    if ans["errors"]:
        raise RuntimeError("; ".join(ans["errors"]))
    return ans["times"]


def _call(exe: str, cmd: str, c: str, conf: str, env: dict) -> dict:
    return {"exe": exe, "stdin": conf, "env": {"CNI_COMMAND": cmd, "CNI_CONTAINERID": c, "CNI_IFNAME": "eth0",
                                               "CNI_NETNS": f"/run/netns/{c}", "CNI_PATH": f"{VENV_BIN}:{REF}", **env}}


def _round(nss: Namespaces, i: int, tmp: Path) -> dict[str, list[float]]:
    host = nss.host(f"h{i}")
    c = nss.make([f"{nss.prefix}-c{i}-{k}" for k in range(6)])
    state = tmp / f"state{i}"
    state.mkdir()
    env = {"MUSLIN_STATE_DIR": str(state)}
    out: dict[str, list[float]] = {}
    ref_dir = tmp / f"ref{i}"
    ref_env = {**env, "CNI_IFNAME": "eth0"}
    rconf = _conf(f"r{token()}", f"10.{200 + i}.0.0/24", True).replace(
        '"ranges"', f'"dataDir": "{ref_dir}", "ranges"')
    out["reference"] = _time(host, [_call(f"{REF}/bridge", "ADD", c[0], rconf, ref_env),
                                    _call(f"{REF}/bridge", "ADD", c[1], rconf, ref_env)])
    nowhere = str(tmp / "no-agent.sock")
    iconf = _conf(f"i{token()}", f"10.{210 + i}.0.0/24", False, nowhere)
    out["in-process"] = _time(host, [_call(str(VENV_BIN / "muslin-cni"), "ADD", c[2], iconf, env),
                                     _call(str(VENV_BIN / "muslin-cni"), "ADD", c[3], iconf, env)])
    sock = str(tmp / f"act{i}.sock")
    log = open(tmp / f"act{i}.log", "w")
    act = subprocess.Popen(["ip", "netns", "exec", host, "systemd-socket-activate", "-l", sock,
                            str(VENV_BIN / "muslind"), "--docker-socket", "", "--agent-socket", sock, "--state-dir",
                            str(state), "--reconcile-interval", "0", "--log-level", "warning"],
                           stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.02)
        aconf = _conf(f"a{token()}", f"10.{220 + i}.0.0/24", False, sock)
        t = _time(host, [_call(str(VENV_BIN / "muslin-cni"), "ADD", c[4], aconf, {}),
                         _call(str(VENV_BIN / "muslin-cni"), "ADD", c[5], aconf, {})])
        out["socket activation"] = t
    finally:
        act.send_signal(signal.SIGTERM)
        try:
            act.wait(15)
        except subprocess.TimeoutExpired:
            act.kill()
            act.wait()
    return out


def run_activation(rounds: int = 5, log=print) -> dict:
    if shutil.which("systemd-socket-activate") is None:
        return {"skipped": "systemd-socket-activate is not installed (Debian package systemd)"}
    if not (VENV_BIN / "muslin-cni").exists():
        return {"skipped": "muslin-cni is not installed in this venv"}
    nss = Namespaces(f"mb{token(4)}")
    tmp = Path(tempfile.mkdtemp(prefix="muslin-bench-act-"))
    got: dict[str, list[list[float]]] = {}
    try:
        for i in range(rounds):
            for k, v in _round(nss, i, tmp).items():
                got.setdefault(k, []).append(v)
    finally:
        nss.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    res: dict = {"rounds": rounds}
    for k, v in got.items():
        res[k] = {"first_add_ms": statistics.median(x[0] for x in v) * 1e3,
                  "second_add_ms": statistics.median(x[1] for x in v) * 1e3}
    for k in ("in-process", "socket activation"):
        if k in res and "reference" in res:
            res[k]["first_vs_ref"] = res[k]["first_add_ms"] / res["reference"]["first_add_ms"]
            res[k]["second_vs_ref"] = res[k]["second_add_ms"] / res["reference"]["second_add_ms"]
    for k in ("reference", "in-process", "socket activation"):
        if k in res:
            log(f"  {k}: first ADD {res[k]['first_add_ms']:.1f} ms, second ADD {res[k]['second_add_ms']:.1f} ms")
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    print(json.dumps(run_activation(a.rounds, log=lambda s: print(s, file=sys.stderr)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

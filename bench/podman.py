"""`podman run` network cost: Muslin (agent and in-process), the reference bridge +
host-local plugins (the same CNI backend of podman) and Podman's netavark.

network cost = median(`podman run --rm ... true` with a network) - median(the same with
`--network none`), runs interleaved. Podman uses a private root/runroot/vfs (recipes.md);
it runs in the root namespace like any real runtime and cleans up its own containers; the
Muslin network (origin cni) disappears with its last endpoint, the netavark network is
removed with `podman network rm`.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ns import token

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "clients"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from podman_util import Podman, drop_empty_tables, free_subnet, iptables_save, nft_tables  # noqa: E402  (the client tests' harness)

VENV_BIN = Path(sys.executable).parent


def run_true(pm: Podman, network: str) -> float:
    """Seconds for one `podman run --rm --network NETWORK ... /bin/true`."""
    t0 = time.perf_counter()
    pm("run", "--rm", "--network", network, "--rootfs", str(pm.rootfs), "/bin/true")
    return time.perf_counter() - t0


def undo_netavark(before_save: str, before_tables: set[str]) -> None:
    """netavark leaves its NETAVARK* iptables chains (and the jumps to them) after its last
    network is gone: remove them when they were not there before, and an ip nat/filter
    table that only they had brought."""
    if "NETAVARK" in before_save:
        return
    import shlex

    table = ""
    for line in iptables_save().splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A ") and "NETAVARK" in line and not line.split()[1].startswith("NETAVARK"):
            args = shlex.split(line)
            subprocess.run(["iptables", "-w", "5", "-t", table, "-D", *args[1:]], capture_output=True)
    table = ""
    for line in iptables_save().splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":NETAVARK"):
            chain = line[1:].split()[0]
            subprocess.run(["iptables", "-w", "5", "-t", table, "-F", chain], capture_output=True)
    for line in iptables_save().splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":NETAVARK"):
            subprocess.run(["iptables", "-w", "5", "-t", table, "-X", line[1:].split()[0]], capture_output=True)
    drop_empty_tables(before_tables)


def _cost(pm: Podman, network: str, runs: int) -> dict:
    run_true(pm, network)  # warm caches (image store, plugin pages)
    run_true(pm, "none")
    net, none = [], []
    for _ in range(runs):
        net.append(run_true(pm, network))
        none.append(run_true(pm, "none"))
    mn, mz = statistics.median(net), statistics.median(none)
    return {"with_network_s": mn, "network_none_s": mz, "cost_s": mn - mz, "runs": runs}


def _reference(tmp: Path, pms: list, runs: int) -> dict:
    """The reference bridge + host-local plugins under the same podman CNI backend."""
    name, bridge = f"mbr{token(4)}", f"mbr{token(4)}"
    pm = Podman(tmp / "r", ["/usr/lib/cni"])
    pms.append(pm)
    before_tables = nft_tables()
    (pm.net_dir / f"{name}.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": [{
        "type": "bridge", "bridge": bridge, "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": str(free_subnet())}]], "dataDir": str(tmp / "hl")}}]}))
    try:
        return _cost(pm, name, runs)
    finally:
        pm("rm", "-a", "-f", "-t", "0", check=False)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)  # the reference leaves its bridge
        drop_empty_tables(before_tables)


def run_podman(runs: int, log=print) -> dict:
    """{"muslin-agent", "muslin-inproc", "reference", "netavark": {...}} (cost_s = network cost)."""
    if not shutil.which("podman"):
        return {"skipped": "podman is not installed"}
    from docker_util import root_ns_lock  # podman works in the root namespace: one user of it at a time

    with root_ns_lock():
        return _run_podman(runs, log)


def _run_podman(runs: int, log=print) -> dict:
    out: dict = {}
    start_tables = nft_tables()
    tmp = Path(tempfile.mkdtemp(prefix="mbp", dir="/tmp"))  # podman wants a short runroot
    agent = None
    pms: list[Podman] = []
    try:
        state = tmp / "state"
        sock = tmp / "muslind.sock"
        log_f = open(tmp / "muslind.log", "w")
        agent = subprocess.Popen([str(VENV_BIN / "muslind"), "--docker-socket", "", "--agent-socket", str(sock),
                                  "--state-dir", str(state), "--reconcile-interval", "0", "--log-level", "warning"],
                                 stdout=log_f, stderr=log_f)
        deadline = time.time() + 30
        while not sock.exists():
            if agent.poll() is not None or time.time() > deadline:
                raise RuntimeError("muslind did not start: " + (tmp / "muslind.log").read_text()[-300:])
            time.sleep(0.05)
        name = f"mbp{token(4)}"
        subnet = str(free_subnet())
        # agentSocket in the config: podman runs some DELs from conmon's cleanup process,
        # which does not carry our environment.
        for variant, s in (("muslin-agent", str(sock)), ("muslin-inproc", str(tmp / "no-agent.sock"))):
            conflist = {"cniVersion": "1.0.0", "name": name, "plugins": [{
                "type": "muslin-cni", "bridge": f"br{name}"[:15], "isGateway": True, "isDefaultGateway": True,
                "ipMasq": True, "dataDir": str(state), "agentSocket": s,
                "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": subnet}]]}}]}
            pm = Podman(tmp / variant[7], [str(VENV_BIN), "/usr/lib/cni"])
            pms.append(pm)
            (pm.net_dir / f"{name}.conflist").write_text(json.dumps(conflist))
            out[variant] = _cost(pm, name, runs)
            log(f"  podman {variant}: network cost {out[variant]['cost_s'] * 1e3:.0f} ms")
        out["reference"] = _reference(tmp, pms, runs)
        log(f"  podman reference bridge: network cost {out['reference']['cost_s'] * 1e3:.0f} ms")
        pm = Podman(tmp / "n", ["/usr/lib/cni"], backend="netavark")
        pms.append(pm)
        nname = f"mbn{token(4)}"
        before_save, before_tables = iptables_save(), nft_tables()
        pm("network", "create", "--subnet", str(free_subnet()), nname)
        try:
            out["netavark"] = _cost(pm, nname, runs)
        finally:
            pm("network", "rm", "-f", nname, check=False)
            pm("rm", "-a", "-f", "-t", "0", check=False)
            undo_netavark(before_save, before_tables)
        log(f"  podman netavark: network cost {out['netavark']['cost_s'] * 1e3:.0f} ms")
        return out
    finally:
        for pm in pms:
            pm.destroy()
        if agent is not None and agent.poll() is None:
            agent.terminate()
            agent.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
        drop_empty_tables(start_tables)  # iptables-nft leaves empty base chains behind

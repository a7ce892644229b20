"""Network policy (`python -m bench.policy [--smoke] [--out DIR]`, as root).

1. apply -> enforced: a host namespace with one bridge network and 9 CLI sandboxes (3 with
   --smoke); a prober in y/b opens a new TCP connection to x/a:80 every few ms and prints
   the start time of the first attempt of each new verdict; the bench alternates
   `muslin policy apply` of a policy denying x/a's ingress and `muslin policy delete`, and
   takes, for each, the time from just before the command to the first attempt showing the
   new verdict (CLOCK_MONOTONIC, the same in every namespace); then the same through the
   use case in one long-lived process (what muslind or any caller without a CLI start pays),
   and the CLI again with a muslind of the state dir running (`policy apply|delete` forwarded
   to it, cli/fast.py).
2. first packet: TCP connect time y/b -> x/a:80 with 10 then 1,000 policies isolating x/a
   (smoke: 2, 20), alternating, 3 runs of each.
3. scale: synthetic endpoints and policies (9/3, 100/20, 1,000/200; smoke: the first two)
   compiled by the pure compiler (time, set elements) and synced into a throwaway namespace's
   nft table (time of the full batch, then of a one-policy change as a delta; the rule count
   of the table as the kernel lists it).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ns import Namespaces, run, token

VENV = Path(sys.executable).parent

SERVER = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(128); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""

PROBER = r"""
import socket, sys, time
addr = sys.argv[1]; last = None
while True:
    t = time.monotonic()
    try:
        socket.create_connection((addr, 80), timeout=0.05).close(); ok = True
    except OSError:
        ok = False
    if ok != last:
        print(f"{t:.6f} {int(ok)}", flush=True); last = ok
    if ok:
        time.sleep(0.002)
"""

# The use-case path without the CLI: one long-lived process (in the host namespace) that
# applies or deletes on each line of stdin, as muslind would on a request.
WORKER = r"""
import sys
from muslin.control import policy as uc
from muslin.control.service import Muslin
from muslin.model.policy import load_documents
m = Muslin(state_dir=sys.argv[1]); sys.stdin.readline()
text = open(sys.argv[2]).read()
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "apply":
        uc.apply(m, load_documents(text))
    else:
        uc.delete(m, [("x", "deny-a")])
    print("done", flush=True)
"""

DENY = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-a, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_ms": round(statistics.median(xs) * 1000, 1), "p99_ms": round(pct(xs, 99) * 1000, 1),
            "max_ms": round(max(xs) * 1000, 1)}


class PolicyHost:
    """A host namespace with one bridge network `pol` (10.<first>+.x.0/24), a CLI sandbox per
    (namespace, pod) (labels pod=<pod>), and a TCP server on x/a:80; `ips`: (namespace, pod)
    -> (sandbox, address). On leaving, the processes in `procs` are stopped (muslind cleanly)
    and everything is removed."""

    def __init__(self, prefix: str, first: int, names: list[tuple[str, str]]) -> None:
        self.prefix, self.first, self.names = prefix, first, names
        self.nss = Namespaces(prefix + token(4))
        self.state = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.host = self.nss.host("h")
        self.procs: list[subprocess.Popen] = []
        self.sbs: list[str] = []
        self.ips: dict[tuple[str, str], tuple[str, str]] = {}

    def muslin(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return run(str(VENV / "muslin"), "--host-netns", self.host, "--state-dir", str(self.state), *args,
                   input=input, check=check)

    def __enter__(self) -> "PolicyHost":
        try:
            pid = os.getpid()
            self.muslin("network", "create", "pol", "--subnet", f"10.{self.first + pid % 50}.{pid % 250}.0/24")
            for ns, p in self.names:
                sb = f"{self.prefix}-{ns}{p}-{token(4)}"
                self.muslin("sandbox", "create", sb)
                self.sbs.append(sb)
                ep = json.loads(self.muslin("connect", "pol", sb, "-o", "json", "--namespace", ns,
                                            "--label", f"pod={p}").stdout)
                self.ips[(ns, p)] = (sb, ep["addresses"][0].split("/")[0])
            srv = subprocess.Popen(["ip", "netns", "exec", self.ips[("x", "a")][0], sys.executable, "-c", SERVER],
                                   stdout=subprocess.PIPE, text=True)
            self.procs.append(srv)
            assert srv.stdout.readline().strip() == "ready"
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()  # muslind: a clean stop
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for sb in self.sbs:
            self.muslin("sandbox", "rm", sb, check=False)
            run("ip", "netns", "del", sb, check=False)
        self.muslin("network", "rm", "pol", check=False)
        self.nss.cleanup()
        shutil.rmtree(self.state, ignore_errors=True)


def apply_to_enforced(rounds: int, pods: int, log) -> dict:
    names = [(ns, p) for ns in "xyz" for p in "abc"][:pods] if pods > 3 else [("x", "a"), ("y", "b"), ("z", "c")]
    with PolicyHost("mbpol", 200, names) as w:
        muslin, host, state, procs, ips = w.muslin, w.host, w.state, w.procs, w.ips
        ip_xa = ips[("x", "a")][1]
        prober = subprocess.Popen(["ip", "netns", "exec", ips[("y", "b")][0], sys.executable, "-u", "-c", PROBER, ip_xa],
                                  stdout=subprocess.PIPE, text=True)
        procs.append(prober)

        def wait_for(state_: int, since: float) -> float:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                t, ok = prober.stdout.readline().split()
                if int(ok) == state_ and float(t) >= since:
                    return float(t) - since
            raise RuntimeError("the prober never saw the new verdict within 10 s")

        wait_for(1, 0)
        applied, deleted, cli = [], [], []
        for _ in range(rounds):
            t0 = time.monotonic()
            muslin("policy", "apply", "-f", "-", input=DENY)
            cli.append(time.monotonic() - t0)
            applied.append(wait_for(0, t0))
            t0 = time.monotonic()
            muslin("policy", "delete", "x/deny-a")
            deleted.append(wait_for(1, t0))
        out = {"sandboxes": len(names), "apply_to_denied": summary(applied), "delete_to_allowed": summary(deleted),
               "apply_cli": summary(cli)}
        # the same through the use case in one process (no CLI start per apply)
        (state / "deny.yaml").write_text(DENY)
        worker = subprocess.Popen(["ip", "netns", "exec", host, sys.executable, "-c", WORKER, str(state),
                                   str(state / "deny.yaml")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(worker)
        worker.stdin.write("start\n")
        worker.stdin.flush()
        assert worker.stdout.readline().strip() == "ready"
        applied, deleted = [], []
        for _ in range(rounds):
            for verb, verdict, into in (("apply", 0, applied), ("delete", 1, deleted)):
                t0 = time.monotonic()
                worker.stdin.write(verb + "\n")
                worker.stdin.flush()
                into.append(wait_for(verdict, t0))
                assert worker.stdout.readline().strip() == "done"
        out["inprocess_apply_to_denied"] = summary(applied)
        out["inprocess_delete_to_allowed"] = summary(deleted)
        # the CLI again, with a muslind of this state dir running: `policy apply|delete` go to it
        sock = state / "agent.sock"
        log_f = open(state / "muslind.log", "w")
        d = subprocess.Popen(["ip", "netns", "exec", host, str(VENV / "muslind"), "--docker-socket", "",
                              "--agent-socket", str(sock), "--state-dir", str(state), "--reconcile-interval", "0",
                              "--log-level", "warning"], stdout=log_f, stderr=subprocess.STDOUT)
        procs.append(d)
        deadline = time.monotonic() + 30
        while not sock.exists() and d.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not sock.exists():
            raise RuntimeError(f"muslind did not start: {(state / 'muslind.log').read_text()[-300:]}")
        env = {**os.environ, "MUSLIN_AGENT_SOCKET": str(sock)}
        applied, deleted = [], []
        for _ in range(rounds):
            for args, verdict, into in ((("apply", "-f", "-"), 0, applied), (("delete", "x/deny-a"), 1, deleted)):
                t0 = time.monotonic()
                subprocess.run([str(VENV / "muslin"), "--host-netns", host, "--state-dir", str(state), "policy", *args],
                               input=DENY, text=True, capture_output=True, check=True, env=env, timeout=60)
                into.append(wait_for(verdict, t0))
        out["forwarded_apply_to_denied"] = summary(applied)
        out["forwarded_delete_to_allowed"] = summary(deleted)
        log(f"  {len(names)} sandboxes, {rounds} rounds: apply->denied p50 {out['apply_to_denied']['p50_ms']} ms "
            f"p99 {out['apply_to_denied']['p99_ms']} ms; delete->allowed p50 {out['delete_to_allowed']['p50_ms']} ms "
            f"p99 {out['delete_to_allowed']['p99_ms']} ms; in one process (the use case, no CLI start): "
            f"apply->denied p50 {out['inprocess_apply_to_denied']['p50_ms']} ms p99 "
            f"{out['inprocess_apply_to_denied']['p99_ms']} ms, delete->allowed p50 "
            f"{out['inprocess_delete_to_allowed']['p50_ms']} ms p99 {out['inprocess_delete_to_allowed']['p99_ms']} ms; "
            f"the CLI forwarding to muslind: apply->denied p50 {out['forwarded_apply_to_denied']['p50_ms']} ms p99 "
            f"{out['forwarded_apply_to_denied']['p99_ms']} ms, delete->allowed p50 "
            f"{out['forwarded_delete_to_allowed']['p50_ms']} ms p99 {out['forwarded_delete_to_allowed']['p99_ms']} ms")
        return out


CONNECTS = r"""
import socket, statistics, sys, time
addr, n = sys.argv[1], int(sys.argv[2]); xs = []
for _ in range(n):
    t = time.perf_counter()
    socket.create_connection((addr, 80), timeout=2).close()
    xs.append(time.perf_counter() - t)
xs.sort(); print(statistics.median(xs), xs[min(len(xs) - 1, int(0.99 * len(xs)))])
"""


RUNS = 3  # the first-packet case alternates small and big this many times


def allow_docs(n: int) -> str:
    """n policies isolating x/a's ingress: the first allows namespace y on 80/TCP, the
    others each a different /32 of 172.16/12 on a port of 1000-1999 (all selecting x/a)."""
    docs = ["""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: 80}]}]}
"""]
    for j in range(1, n):
        ip = ipaddress.ip_address("172.16.0.1") + j
        docs.append(f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: other-{j}, namespace: x}}
spec: {{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{ipBlock: {{cidr: {ip}/32}}}}], ports: [{{port: {1000 + j % 1000}}}]}}]}}
""")
    return "---\n".join(docs)


def first_packet(counts: tuple[int, int], connects: int, log) -> dict:
    """TCP connect time y/b -> x/a:80 (SYN to SYN-ACK and the ACK: the first packet of a new
    connection through the policy chains) with counts[0] then counts[1] policies isolating
    x/a, measured RUNS times in the order small, big, small, big...; medians of the medians
    (and each run's, to show the spread)."""
    with PolicyHost("mbpof", 150, [("x", "a"), ("y", "b")]) as w:
        muslin, ips = w.muslin, {ns: v for (ns, _), v in w.ips.items()}
        small, big = allow_docs(counts[0]), allow_docs(counts[1])
        extra = [f"x/other-{j}" for j in range(counts[0], counts[1])]
        res: dict[int, list[tuple[float, float]]] = {counts[0]: [], counts[1]: []}
        for n in counts * RUNS:
            if n == counts[0] and res[counts[1]]:
                for i in range(0, len(extra), 100):
                    muslin("policy", "delete", *extra[i:i + 100])
            else:
                muslin("policy", "apply", "-f", "-", input=small if n == counts[0] else big)
            got = run("ip", "netns", "exec", ips["y"][0], sys.executable, "-c", CONNECTS, ips["x"][1],
                      str(connects)).stdout.split()
            res[n].append((float(got[0]), float(got[1])))
        out = {}
        for n, xs in res.items():
            out[str(n)] = {"connect_p50_us": round(statistics.median(x[0] for x in xs) * 1e6, 1),
                           "connect_p99_us": round(statistics.median(x[1] for x in xs) * 1e6, 1),
                           "runs_p50_us": [round(x[0] * 1e6, 1) for x in xs]}
        a, b = out[str(counts[0])]["connect_p50_us"], out[str(counts[1])]["connect_p50_us"]
        out["ratio_p50"] = round(b / a, 3)
        log(f"  first packet (TCP connect, {connects} per run, {RUNS} runs each): {counts[0]} policies p50 {a} us "
            f"p99 {out[str(counts[0])]['connect_p99_us']} us; {counts[1]} policies p50 {b} us "
            f"p99 {out[str(counts[1])]['connect_p99_us']} us; ratio {out['ratio_p50']} (runs' p50: "
            f"{out[str(counts[0])]['runs_p50_us']} vs {out[str(counts[1])]['runs_p50_us']})")
        return out


def synthetic(n_eps: int, n_pols: int):  # type: ignore[no-untyped-def]
    """n_eps local endpoints in 10 namespaces, 50 apps; n_pols policies each selecting an
    app and allowing another app (any namespace) on 80/TCP and one namespace on 53/UDP."""
    from muslin.firewall.policy import PolicyEndpoint, PolicyInput
    from muslin.model.policy import Namespace, parse_policy

    base = ipaddress.ip_address("10.77.0.10")
    eps = tuple(PolicyEndpoint(key=f"net/e{i}", namespace=f"ns{i % 10}", labels=(("app", f"app{i % 50}"),),
                               addresses=(base + i,), name=f"e{i}") for i in range(n_eps))
    pols = tuple(parse_policy({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": f"p{j}", "namespace": f"ns{j % 10}"},
        "spec": {"podSelector": {"matchLabels": {"app": f"app{j % 50}"}},
                 "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": f"app{(j + 1) % 50}"}}}],
                              "ports": [{"port": 80}]},
                             {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": f"ns{(j + 3) % 10}"}}}],
                              "ports": [{"protocol": "UDP", "port": 53}]}]}}) for j in range(n_pols))
    nss = tuple(Namespace(f"ns{i}") for i in range(10))
    return PolicyInput(pols, nss, eps)


def scale(levels: list[tuple[int, int]], log) -> list[dict]:
    from muslin.firewall.policy import compile_policy
    from muslin.firewall.state import FirewallState, NetRule

    out = []
    nss = Namespaces("mbpos" + token(4))
    try:
        for n_eps, n_pols in levels:
            inp = synthetic(n_eps, n_pols)
            t0 = time.perf_counter()
            c = compile_policy(inp)
            compile_s = time.perf_counter() - t0
            elements = sum(len(v) for v in c.elements.values())
            ns = nss.host(f"s{n_eps}")
            net = NetRule("mbpolbr0", (ipaddress.ip_network("10.77.0.0/16"),))
            state = FirewallState(networks=(net,), policy=inp)
            changed = FirewallState(networks=(net,), policy=type(inp)(inp.policies[:-1], inp.namespaces, inp.endpoints))
            code = ("import sys, time, json; from muslin.dataplane import nft; import pickle; "
                    "s = pickle.loads(sys.stdin.buffer.read()); t = time.perf_counter(); nft.sync(s[0], 'bench'); "
                    "full = time.perf_counter() - t; t = time.perf_counter(); nft.sync(s[1], 'bench'); "
                    "print(json.dumps([full, time.perf_counter() - t]))")
            p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], input=pickle.dumps((state, changed)),
                               capture_output=True, timeout=600)
            if p.returncode != 0:
                raise RuntimeError(p.stderr.decode()[-300:])
            full_s, delta_s = json.loads(p.stdout)
            listing = run("ip", "netns", "exec", ns, "nft", "-a", "list", "table", "inet", "muslin").stdout
            rules = sum(1 for ln in listing.splitlines() if "# handle" in ln and not ln.strip().startswith(("chain", "set", "map", "table")))
            row = {"endpoints": n_eps, "policies": n_pols, "compile_ms": round(compile_s * 1000, 1),
                   "set_elements": elements, "nft_full_sync_ms": round(full_s * 1000, 1),
                   "nft_one_policy_delta_ms": round(delta_s * 1000, 1), "rules": rules}
            log(f"  {n_eps} endpoints, {n_pols} policies: compile {row['compile_ms']} ms, {elements} elements, "
                f"full sync {row['nft_full_sync_ms']} ms, one-policy delta {row['nft_one_policy_delta_ms']} ms, "
                f"{rules} rules")
            out.append(row)
    finally:
        nss.cleanup()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny counts: that it works, not how fast")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.policy: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    log = lambda s: print(s, flush=True)  # noqa: E731
    rounds, pods = (3, 3) if a.smoke else (50, 9)
    levels = [(9, 3), (100, 20)] if a.smoke else [(9, 3), (100, 20), (1000, 200)]
    res = {"argv": ["python", "-m", "bench.policy", *(argv if argv is not None else sys.argv[1:])],
           "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load": os.getloadavg()}
    log(f"policy apply -> enforced ({rounds} rounds)")
    res["enforce"] = apply_to_enforced(rounds, pods, log)
    log("policy first-packet latency")
    res["first_packet"] = first_packet((2, 20) if a.smoke else (10, 1000), 50 if a.smoke else 2000, log)
    log("policy scale (pure compile, nft sync in a throwaway namespace)")
    res["scale"] = scale(levels, log)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "policy.json").write_text(json.dumps(res, indent=2))
    log(f"wrote {out / 'policy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A truth-table harness for network policy in the style of Kubernetes' e2e `netpol` suite.

Namespaces x, y, z with sandboxes a, b, c each (labels pod=a ..., namespace labels ns=x ...),
every sandbox serving TCP and UDP on ports 80 and 81. `World.probe()` measures the whole
matrix (each source sandbox probes every other one on each port/protocol, all at once: one
prober process per sandbox per round) and `World.expect()` retries until the measured matrix
is the expected one or a deadline passes, then fails showing both."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable

from nsutil import ExistingNetns, random_subnet24, sh, suffix, tool

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PORTS = (("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81))

SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in (80, 81):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port)); t.listen(64); t.setblocking(False)
    sel.register(t, selectors.EVENT_READ, "tcp")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", port)); u.setblocking(False)
    sel.register(u, selectors.EVENT_READ, "udp")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        try:
            if key.data == "tcp":
                c, _ = s.accept()
                c.setblocking(True); c.settimeout(1)
                c.sendall(b"ok\n"); c.close()
            else:
                data, peer = s.recvfrom(2048)
                s.sendto(b"ok", peer)
        except OSError:
            pass
"""

PROBER = r"""
import json, socket, sys, threading
targets = json.loads(sys.argv[1]); timeout = float(sys.argv[2])
out = [False] * len(targets)
def probe(i, addr, proto, port):
    try:
        if proto == "tcp":
            with socket.create_connection((addr, port), timeout=timeout) as c:
                out[i] = c.recv(3) == b"ok\n"
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(timeout / 3)
                for _ in range(3):
                    u.sendto(b"hi", (addr, port))
                    try:
                        if u.recv(16) == b"ok":
                            out[i] = True
                            break
                    except socket.timeout:
                        pass
    except OSError:
        pass
ts = [threading.Thread(target=probe, args=(i, *t)) for i, t in enumerate(targets)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out))
"""


@dataclass
class Pod:
    namespace: str
    name: str
    sandbox: str
    ip: str
    server: subprocess.Popen | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


Matrix = dict[tuple[str, str, str, int], bool]  # (src, dst, proto, port) -> reachable
Rule = Callable[[Pod, Pod, str, int], bool]  # src, dst, proto, port -> allowed


@dataclass
class World:
    """A host namespace with one bridge network and the 9 sandboxes, their servers running."""

    host: object
    state: str
    tag: str = field(default_factory=suffix)
    pods: dict[str, Pod] = field(default_factory=dict)
    network: str = "pn"
    labels_changed: dict[str, dict[str, str | None]] = field(default_factory=dict)
    ns_labels_changed: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def muslin(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        r = sh(tool("muslin"), "--host-netns", self.host.name, "--state-dir", self.state, *args, check=False,
               input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"muslin {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def add_pod(self, namespace: str, name: str, *extra: str, labels: dict[str, str] | None = None) -> Pod:
        sb = f"mt-{namespace}{name}-{self.tag}"
        self.muslin("sandbox", "create", sb)
        lab = [f"--label=pod={name}"] + [f"--label={k}={v}" for k, v in (labels or {}).items()]
        ep = json.loads(self.muslin("connect", self.network, sb, "-o", "json", "--namespace", namespace, *lab,
                                    *extra).stdout)
        pod = Pod(namespace, name, sb, ep["addresses"][0].split("/")[0])
        pod.server = subprocess.Popen(["ip", "netns", "exec", sb, sys.executable, "-c", SERVER],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pods[pod.key] = pod
        return pod

    def wait_servers(self, *keys: str) -> None:
        for p in [self.pods[k] for k in keys] if keys else self.pods.values():
            line = p.server.stdout.readline()
            assert "ready" in line, f"server in {p.key} did not start: {p.server.stderr.read()}"

    def remove_pod(self, key: str) -> None:
        p = self.pods.pop(key)
        if p.server:
            p.server.kill()
            p.server.wait()
        self.muslin("sandbox", "rm", p.sandbox, check=False)
        sh("ip", "netns", "del", p.sandbox, check=False)

    def cleanup(self) -> None:
        for key in list(self.pods):
            self.remove_pod(key)

    # -- changes the tests make, undone by reset() ----------------------------------------------

    def apply(self, text: str) -> str:
        return self.muslin("policy", "apply", "-f", "-", input=text).stdout

    def label(self, key: str, **changes: str | None) -> None:
        """Set (value) or remove (None) labels of a pod; reset() puts them back."""
        p = self.pods[key]
        self.labels_changed.setdefault(key, {}).update({k: None for k in changes})
        self.muslin("label", p.sandbox, *[f"{k}={v}" if v is not None else f"{k}-" for k, v in changes.items()])

    def label_namespace(self, ns: str, **changes: str | None) -> None:
        self.ns_labels_changed.setdefault(ns, {}).update({k: None for k in changes})
        self.muslin("namespace", "label", ns,
                    *[f"{k}={v}" if v is not None else f"{k}-" for k, v in changes.items()])

    def reset(self) -> None:
        names = self.muslin("policy", "ls", "-q").stdout.split()
        if names:
            self.muslin("policy", "delete", *names)
        for key, keys in self.labels_changed.items():
            if key in self.pods:
                p = self.pods[key]
                self.muslin("label", p.sandbox, *[f"{k}=" + p.name if k == "pod" else f"{k}-" for k in keys])
        for ns, keys in self.ns_labels_changed.items():
            self.muslin("namespace", "label", ns, *[f"{k}={ns}" if k == "ns" else f"{k}-" for k in keys])
        self.labels_changed.clear()
        self.ns_labels_changed.clear()

    # -- the prober ------------------------------------------------------------------------------

    def probe(self, ports=PORTS, timeout: float = 0.6) -> Matrix:
        pods = list(self.pods.values())
        procs = {}
        for s in pods:
            targets = [(d.ip, proto, port) for d in pods if d is not s for proto, port in ports]
            procs[s.key] = (targets, subprocess.Popen(
                ["ip", "netns", "exec", s.sandbox, sys.executable, "-c", PROBER, json.dumps(targets), str(timeout)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        by_ip = {p.ip: p.key for p in pods}
        m: Matrix = {}
        for src, (targets, proc) in procs.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"prober in {src}: {err}"
            for (ip, proto, port), ok in zip(targets, json.loads(out)):
                m[(src, by_ip[ip], proto, port)] = ok
        return m

    def expected(self, rule: Rule, ports=PORTS) -> Matrix:
        pods = list(self.pods.values())
        return {(s.key, d.key, proto, port): bool(rule(s, d, proto, port))
                for s in pods for d in pods if d is not s for proto, port in ports}

    def expect(self, rule: Rule, ports=PORTS, deadline: float = 20.0) -> None:
        want = self.expected(rule, ports)
        end = time.monotonic() + deadline
        while True:
            got = self.probe(ports)
            if got == want:
                return
            if time.monotonic() > end:
                raise AssertionError("reachability differs from the expected matrix:\n" + render(want, got, ports))
            time.sleep(0.2)


def render(want: Matrix, got: Matrix, ports) -> str:
    """One table per port/protocol; each cell the measured value, '!' marking a wrong one."""
    keys = sorted({k[0] for k in want} | {k[1] for k in want})
    lines = []
    for proto, port in ports:
        lines.append(f"{port}/{proto}  (rows: from, columns: to; 1 reachable, 0 not, ! differs from expected)")
        lines.append("      " + " ".join(f"{k:>4}" for k in keys))
        for s in keys:
            cells = []
            for d in keys:
                if s == d:
                    cells.append("   -")
                    continue
                w, g = want[(s, d, proto, port)], got[(s, d, proto, port)]
                cells.append(f"{'!' if w != g else ' '}{int(g):>3}")
            lines.append(f"{s:>5} " + " ".join(cells))
    return "\n".join(lines)


# Expected-matrix helpers: each a Rule

def everyone(s: Pod, d: Pod, proto: str, port: int) -> bool:
    return True


def nobody(s: Pod, d: Pod, proto: str, port: int) -> bool:
    return False


@contextlib.contextmanager
def x_a_and_y_b(muslin: Callable[..., subprocess.CompletedProcess],
                prefix: str) -> Iterator[tuple[list[ExistingNetns], list[str]]]:
    """Two CLI sandboxes on a new network `pol`: x/a and y/b (namespace x / y, label pod=a /
    pod=b); yields their namespaces and addresses. `muslin(*args, check=...)` runs the CLI on
    the host; the sandboxes and the network are removed at the end, whatever happened."""
    sbs = [f"{prefix}{p}-{suffix()}" for p in "ab"]
    try:
        muslin("network", "create", "pol", "--subnet", random_subnet24())
        ips = []
        for sb, (ns, pod) in zip(sbs, (("x", "a"), ("y", "b"))):
            muslin("sandbox", "create", sb)
            ep = json.loads(muslin("connect", "pol", sb, "-o", "json", "--namespace", ns,
                                   "--label", f"pod={pod}").stdout)
            ips.append(ep["addresses"][0].split("/")[0])
        yield [ExistingNetns(sb) for sb in sbs], ips
    finally:
        for sb in sbs:
            muslin("sandbox", "rm", sb, check=False)
            sh("ip", "netns", "del", sb, check=False)
        muslin("network", "rm", "pol", check=False)

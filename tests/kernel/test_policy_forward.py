"""`muslin policy apply|delete` forwarded to a running muslind of the same state dir and host
namespace (cli/fast.py -> control/policy_agent.py): the same output and exit statuses as the
CLI's own path, the policy enforced on real traffic, and the work done by muslind (its
phase timings count the firewall syncs; a CLI doing the work itself would not add to them)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from netpol import x_a_and_y_b
from nsutil import EchoServer, Muslind, tcp_echo, tool

pytestmark = pytest.mark.kernel

DENY = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-a, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}
"""


def syncs(sock) -> int:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(json.dumps({"plugin": "stats", "env": {}, "stdin": "{}"}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            buf += s.recv(65536)
    return int(json.loads(json.loads(buf)["stdout"]).get("nft transaction", {}).get("n", 0))


def test_policy_apply_and_delete_go_through_muslind(netns, tmp_path):
    host = netns("host")
    state = tmp_path / "state"
    env = {**os.environ, "MUSLIN_AGENT_SOCKET": str(state / "agent.sock")}
    env.pop("MUSLIN_CLUSTER_STORE", None)

    def muslin(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([tool("muslin"), "--host-netns", host.name, "--state-dir", str(state), *args],
                              input=input, text=True, capture_output=True, env=env, check=check, timeout=60)

    with Muslind(host, state) as d, x_a_and_y_b(muslin, "mtfw") as ((xa, yb), ips):
        with EchoServer(xa):
            assert tcp_echo(yb, ips[0], wait=5) is not None
            (tmp_path / "deny.yaml").write_text(DENY)
            before = syncs(d.sock)
            r = muslin("policy", "apply", "-f", str(tmp_path / "deny.yaml"))
            assert r.stdout == "policy x/deny-a created\n" and r.stderr == ""
            assert syncs(d.sock) == before + 1  # muslind synced the firewall, not the CLI
            assert tcp_echo(yb, ips[0]) is None  # denied: x/a is isolated
            assert muslin("policy", "apply", "-f", "-", input=DENY).stdout == "policy x/deny-a unchanged\n"
            out = json.loads(muslin("policy", "apply", "-o", "json", "-f", "-", input=DENY).stdout)
            assert out == [{"policy": "x/deny-a", "status": "unchanged"}]
            bad = muslin("policy", "apply", "-f", "-", input=DENY.replace("Ingress", "Sideways"), check=False)
            assert bad.returncode == 2 and bad.stdout == ""
            assert bad.stderr.startswith("error: ") and "policyTypes[0]" in bad.stderr
            assert len(bad.stderr.splitlines()) == 1
            ruleset = host.run("nft", "list", "ruleset").stdout
            r = muslin("policy", "delete", "x/deny-a")
            assert r.stdout == "policy x/deny-a deleted\n" and syncs(d.sock) == before + 2
            assert host.run("nft", "list", "ruleset").stdout != ruleset
            assert tcp_echo(yb, ips[0], wait=5) is not None  # allowed again
            gone = muslin("policy", "delete", "x/deny-a", check=False)
            assert gone.returncode == 3 and gone.stderr.strip() == "error: policy x/deny-a does not exist"
            assert muslin("policy", "delete", "--ignore-not-found", "x/deny-a").stdout == ""
            # another state dir: not this muslind's, the CLI does the work itself (and says so)
            other = subprocess.run([tool("muslin"), "--host-netns", host.name, "--state-dir", str(tmp_path / "o"),
                                    "policy", "apply", "-f", "-"], input=DENY, text=True, capture_output=True,
                                   env=env, timeout=60)
            assert other.returncode == 4 and "state dir" in other.stderr  # one state dir per host namespace
            assert syncs(d.sock) == before + 2

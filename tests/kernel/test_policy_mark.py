"""The policy chains keep the packet mark: another table's mark on the first packet of a new
connection to an isolated endpoint (kube-proxy marks what it will masquerade this way) is
still there after the forward hook. The chains use the packet's priority as their scratch
register instead (firewall/policy.py)."""

from __future__ import annotations

import json
import subprocess

import pytest
from netpol import x_a_and_y_b
from nsutil import EchoServer, tcp_echo, tool

pytestmark = pytest.mark.kernel

ALLOW = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: 7007}]}]
"""

MARKS = """table inet mtmark {
  chain pre { type filter hook prerouting priority -200; ip daddr %(ip)s tcp dport 7007 meta mark set 0x4000; }
  chain post { type filter hook postrouting priority 100;
    ip daddr %(ip)s tcp dport 7007 tcp flags syn meta mark 0x4000 counter comment "marked";
    ip daddr %(ip)s tcp dport 7007 tcp flags syn counter comment "all"; }
}
"""


def counters(host) -> dict[str, int]:
    out = json.loads(host.run("nft", "-j", "list", "table", "inet", "mtmark").stdout)
    got = {}
    for item in out["nftables"]:
        r = item.get("rule")
        if r and r.get("comment"):
            got[r["comment"]] = next(e["counter"]["packets"] for e in r["expr"] if "counter" in e)
    return got


def test_a_mark_set_before_the_forward_hook_survives_the_policy_chains(netns, tmp_path):
    host = netns("host")
    state = tmp_path / "state"

    def muslin(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([tool("muslin"), "--host-netns", host.name, "--state-dir", str(state), *args],
                              input=input, text=True, capture_output=True, check=check, timeout=60)

    with x_a_and_y_b(muslin, "mtmk") as ((xa, yb), ips):
        muslin("policy", "apply", "-f", "-", input=ALLOW)
        host.run("nft", "-f", "-", input=MARKS % {"ip": ips[0]})
        with EchoServer(xa):
            assert tcp_echo(yb, ips[0], wait=5) is not None  # allowed by the policy
        c = counters(host)
        assert c["all"] >= 1 and c["marked"] == c["all"]  # every SYN kept its mark

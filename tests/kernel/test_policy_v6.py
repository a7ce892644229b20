"""Network policy over IPv6 on a dual-stack network (one host): selectors and ipBlock apply to
IPv6 addresses as to IPv4 ones, neighbour discovery keeps working for isolated endpoints, and a
guarded sandbox cannot send from another IPv6 address."""

from __future__ import annotations

import ipaddress
import random
import time

import pytest
from nsutil import random_subnet24, sh, tool
from test_cli_bridge import world  # noqa: F401 - fixture

pytestmark = pytest.mark.kernel


def _v6(ep: dict) -> str:
    return [x.split("/")[0] for x in ep["addresses"] if ":" in x][0]


def test_ipv6_selectors_ipblock_and_source_guard(world):
    w = world
    v6 = f"fd00:{random.randint(1, 0xfff):x}:{random.randint(1, 0xfff):x}::/64"
    w.muslin("network", "create", "ds", "--subnet", random_subnet24(), "--subnet", v6)
    sb = {r: w.sandbox(r) for r in ("a", "b", "c")}
    ns = {"a": "x", "b": "x", "c": "y"}
    ep = {r: w.connect("ds", sb[r], "--namespace", ns[r], "--label", f"pod={r}") for r in sb}
    six = {r: _v6(ep[r]) for r in sb}

    def ping6(src: str, dst: str) -> bool:
        return w.in_sb(sb[src], "ping", "-6", "-c", "1", "-W", "1", six[dst]).returncode == 0

    def matrix() -> dict:
        return {(s, d): ping6(s, d) for s in sb for d in sb if s != d}

    def expect(want: dict, deadline: float = 15) -> None:
        end = time.monotonic() + deadline
        while (got := matrix()) != want:
            assert time.monotonic() < end, f"got {got}, want {want}"
            time.sleep(0.2)

    def apply(text: str) -> None:
        sh(tool("muslin"), "--host-netns", w.host.name, "--state-dir", w.state, "policy", "apply", "-f", "-",
           input=text)

    expect({k: True for k in matrix()})
    apply("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
""")
    expect({(s, d): d != "a" or s == "b" for s in sb for d in sb if s != d})
    net = ipaddress.ip_network(v6)
    apply(f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: a-from-b, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{ipBlock: {{cidr: "{net}", except: ["{six['b']}/128"]}}}}]}}]
""")
    expect({(s, d): d != "a" or s == "c" for s in sb for d in sb if s != d})
    # a guarded sandbox sending from another IPv6 address of the subnet reaches no one
    other = str(net.network_address + random.randint(0x1000, 0xffff))
    w.in_sb(sb["c"], "ip", "-6", "addr", "add", f"{other}/64", "dev", "eth0", "nodad", check=True)
    assert w.in_sb(sb["c"], "ping", "-6", "-c", "2", "-W", "1", "-I", other, six["b"]).returncode != 0
    assert w.in_sb(sb["c"], "ping", "-6", "-c", "1", "-W", "1", "-I", six["c"], six["b"]).returncode == 0
    w.in_sb(sb["c"], "ip", "-6", "addr", "del", f"{other}/64", "dev", "eth0", check=True)
    assert ping6("c", "b")

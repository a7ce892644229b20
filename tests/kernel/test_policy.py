"""Network policy with Kubernetes semantics, proven by the truth table (tests/kernel/netpol.py):
x, y, z with a, b, c each on one bridge network of a namespace that plays the host; each test
applies policies with `muslin policy apply`, changes labels with `muslin label` /
`muslin namespace label`, and compares the measured 9x9 matrix (TCP and UDP, 80 and 81) with
the one Kubernetes' semantics give."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from netpol import NAMESPACES, PODS, PROBER, World, everyone
from nsutil import NetnsFactory, random_subnet24

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    f = NetnsFactory()
    w = None
    try:
        host = f("host")
        w = World(host, str(tmp_path_factory.mktemp("policy") / "state"))
        w.subnet = random_subnet24()
        w.muslin("network", "create", w.network, "--subnet", w.subnet)
        for ns in NAMESPACES:
            w.muslin("namespace", "label", ns, f"ns={ns}")
            for p in PODS:
                w.add_pod(ns, p, "--expose", f"web={81 if p == 'c' else 80}/tcp")
        w.wait_servers()
        yield w
    finally:
        if w is not None:
            w.cleanup()
            w.muslin("network", "rm", w.network, check=False)
        f.cleanup()


@pytest.fixture
def w(world):
    world.reset()
    yield world


def doc(name: str, ns: str, spec: str) -> str:
    return f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
{spec}
---
"""


def test_without_policy_everyone_reaches_everyone(w):
    w.expect(everyone)


def test_default_deny_ingress_but_the_host_still_reaches_its_endpoints(w):
    w.apply(doc("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress]"))
    w.expect(lambda s, d, proto, port: d.namespace != "x")
    # kubelet-style probes: traffic from the host to its local endpoints is allowed
    targets = [(p.ip, "tcp", 80) for p in w.pods.values() if p.namespace == "x"]
    r = w.host.run(sys.executable, "-c", PROBER, json.dumps(targets), "2")
    assert json.loads(r.stdout) == [True] * 3


def test_default_deny_egress(w):
    w.apply(doc("deny", "x", "  podSelector: {}\n  policyTypes: [Egress]"))
    w.expect(lambda s, d, proto, port: s.namespace != "x")


def test_default_deny_both_ways(w):
    w.apply(doc("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress, Egress]"))
    w.expect(lambda s, d, proto, port: s.namespace != "x" and d.namespace != "x")


def test_allow_from_a_pod_selector_of_the_same_namespace(w):
    w.apply(doc("a-from-b", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                                 "  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a" or s.key == "x/b")


def test_allow_from_a_namespace_selector(w):
    w.apply(doc("a-from-y", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                                 "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a" or s.namespace == "y")


def test_both_selectors_in_one_peer_are_and_in_two_peers_or(w):
    w.apply(doc("and", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                            "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}},"
                            " podSelector: {matchLabels: {pod: b}}}]}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a" or s.key == "y/b")
    w.apply(doc("and", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                            "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}},"
                            " {podSelector: {matchLabels: {pod: b}}}]}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a" or s.namespace == "y" or s.key == "x/b")


def test_match_expressions(w):
    w.apply(doc("expr", "x", """  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}
      podSelector: {matchExpressions: [{key: pod, operator: Exists}, {key: role, operator: DoesNotExist}]}"""))
    w.expect(lambda s, d, proto, port: d.key not in ("x/a", "x/b") or s.namespace != "y")


def test_a_port_limited_rule(w):
    w.apply(doc("tcp80", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                              "  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 80}]}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a" or (proto, port) == ("tcp", 80))


def test_a_named_port_is_each_destination_s_own(w):
    # x/c declared web=81/tcp, the others web=80/tcp (connect --expose)
    w.apply(doc("web", "x", "  podSelector: {}\n"
                            "  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: web, protocol: TCP}]}]"))
    w.expect(lambda s, d, proto, port: d.namespace != "x"
             or (proto == "tcp" and port == (81 if d.name == "c" else 80)))


def test_end_port_range(w):
    w.apply(doc("udp", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                            "  ingress: [{ports: [{protocol: UDP, port: 80, endPort: 81}]}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a" or proto == "udp")
    w.apply(doc("udp", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                            "  ingress: [{ports: [{protocol: TCP, port: 81, endPort: 90}]}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a" or (proto, port) == ("tcp", 81))


def test_ip_block_with_except(w):
    yb = w.pods["y/b"].ip
    w.apply(doc("cidr", "x", f"  podSelector: {{matchLabels: {{pod: a}}}}\n"
                             f"  ingress: [{{from: [{{ipBlock: {{cidr: {w.subnet}, except: [{yb}/32]}}}}]}}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a" or s.key != "y/b")


def test_egress_to_a_selector(w):
    w.apply(doc("out", "x", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"
                            "  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}},"
                            " podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}}]}]"))
    w.expect(lambda s, d, proto, port: s.key != "x/a" or d.key in ("y/a", "y/b"))


def test_two_policies_are_a_union(w):
    w.apply(doc("from-y", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                               "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]")
            + doc("from-zc", "x", "  podSelector: {}\n"
                                  "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}},"
                                  " podSelector: {matchLabels: {pod: c}}}], ports: [{port: 81}]}]"))
    w.expect(lambda s, d, proto, port: d.namespace != "x"
             or (d.key == "x/a" and s.namespace == "y")
             or (s.key == "z/c" and (proto, port) == ("tcp", 81)))


def test_update_in_place_and_delete(w):
    out = w.apply(doc("p", "x", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"))
    assert "policy x/p created" in out
    w.expect(lambda s, d, proto, port: d.namespace != "x" or s.namespace == "y")
    out = w.apply(doc("p", "x", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]"))
    assert "policy x/p configured" in out
    w.expect(lambda s, d, proto, port: d.namespace != "x" or s.namespace == "z")
    w.muslin("policy", "delete", "x/p")
    w.expect(everyone)


def test_pod_label_changes_flip_reachability_both_ways(w):
    w.apply(doc("clients", "x", "  podSelector: {matchLabels: {role: server}}\n"
                                "  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]}]"))
    w.expect(everyone)  # nobody is a server yet: no one is isolated
    w.label("x/b", role="server")
    w.expect(lambda s, d, proto, port: d.key != "x/b")
    w.label("z/c", role="client")
    w.expect(lambda s, d, proto, port: d.key != "x/b" or s.key == "z/c")
    w.label("z/c", role=None)
    w.expect(lambda s, d, proto, port: d.key != "x/b")
    w.label("x/b", role=None)
    w.expect(everyone)


def test_namespace_label_changes_flip_reachability_both_ways(w):
    w.apply(doc("blue", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a")
    w.label_namespace("z", team="blue")
    w.expect(lambda s, d, proto, port: d.key != "x/a" or s.namespace == "z")
    w.label_namespace("z", team=None)
    w.expect(lambda s, d, proto, port: d.key != "x/a")


def test_a_new_sandbox_is_picked_up_by_an_existing_policy(w):
    w.apply(doc("bd", "x", "  podSelector: {}\n"
                           "  ingress: [{from: [{namespaceSelector: {},"
                           " podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, d]}]}}]}]"))
    rule = lambda s, d, proto, port: d.namespace != "x" or s.name in ("b", "d")  # noqa: E731
    w.expect(rule)
    try:
        w.add_pod("x", "d")  # isolated as a member of x, allowed as a source pod=d
        w.add_pod("y", "d")
        w.wait_servers("x/d", "y/d")
        w.expect(rule)
    finally:
        for key in ("x/d", "y/d"):
            if key in w.pods:
                w.remove_pod(key)
    w.expect(rule)


def test_invalid_input_is_refused_whole_and_changes_nothing(w):
    before = w.host.run("nft", "list", "ruleset").stdout
    bad = doc("good", "x", "  podSelector: {}") + doc("bad", "x", "  podSelector: {}\n"
                                                      "  ingress: [{ports: [{port: 90, endPort: 80}]}]")
    r = w.muslin("policy", "apply", "-f", "-", input=bad, check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "spec.ingress[0].ports[0].endPort" in r.stderr, r.stderr
    assert w.muslin("policy", "ls", "-q").stdout.strip() == ""
    assert w.host.run("nft", "list", "ruleset").stdout == before
    r = w.muslin("policy", "apply", "-f", "-", input="kind: [", check=False)
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "not YAML or JSON" in r.stderr


def test_explain_names_the_deciding_policy_and_drops_are_counted_per_policy(w):
    w.apply(doc("from-y", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                               "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a" or (s.namespace == "y" and (proto, port) == ("tcp", 80)),
             ports=(("tcp", 80), ("tcp", 81)))
    xa, xb, ya = w.pods["x/a"], w.pods["x/b"], w.pods["y/a"]
    r = w.muslin("policy", "explain", ya.sandbox, xa.ip, "--port", "80/tcp", "-o", "json")
    v = json.loads(r.stdout)
    assert v["allowed"] and v["ingress"]["isolated"] and v["ingress"]["policies"] == ["x/from-y"]
    assert v["ingress"]["allowed_by"] and "x/from-y" in v["ingress"]["allowed_by"][0]
    assert not v["egress"]["isolated"]
    r = w.muslin("policy", "explain", xb.sandbox, xa.sandbox, "--port", "80/tcp", check=False)
    assert r.returncode == 1 and "denied" in r.stdout and "x/from-y" in r.stdout, r.stdout
    r = w.muslin("policy", "explain", ya.ip, xa.ip, "--port", "81/tcp", check=False)
    assert r.returncode == 1 and "no rule of them allows it" in r.stdout, r.stdout
    assert w.muslin("policy", "explain", xa.ip, xb.ip).returncode == 0  # x/b is not isolated
    stats = json.loads(w.muslin("policy", "stats", "-o", "json").stdout)
    # the matrix just probed x/a from 8 sandboxes on 81/tcp and from x, z on 80/tcp: all dropped
    assert stats["policies"]["x/from-y"]["ingress"] >= 8, stats
    assert stats["policies"]["x/from-y"]["egress"] == 0, stats


FLOW = r"""
import os, socket, sys, time
mode, addr, stop = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "serve":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8080)); s.listen(4); print("ready", flush=True)
    c, _ = s.accept(); f = c.makefile("rwb")
    for line in f:
        f.write(line); f.flush()
elif mode == "flow":  # one established connection, a line each 20 ms, each echoed
    c = socket.create_connection((addr, 8080), timeout=2); f = c.makefile("rwb"); n = 0
    print("connected", flush=True)
    try:
        while not os.path.exists(stop):
            f.write(b"%d\n" % n); f.flush()
            assert f.readline() == b"%d\n" % n
            n += 1; time.sleep(0.02)
        print(f"ok {n}", flush=True)
    except (OSError, AssertionError) as e:
        print(f"broken after {n}: {e!r}", flush=True)
else:  # new connections to a denied port, as fast as they fail
    through = tries = 0
    while not os.path.exists(stop):
        tries += 1
        try:
            socket.create_connection((addr, 80), timeout=0.1).close(); through += 1
        except OSError:
            pass
    print(f"{through} {tries}", flush=True)
"""

UPDATES = r"""
import sys
from muslin.control import policy as uc
from muslin.control.service import Muslin
m = Muslin(state_dir=sys.argv[1])
def pol(name, spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "x"}, "spec": spec}
for i in range(100):
    rules = [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]},
             {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 9000 + i}]}]
    docs = [pol("base", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": rules})]
    if i % 2:
        docs.append(pol("side", {"podSelector": {"matchLabels": {"pod": "c"}}, "ingress": [{"ports": [{"port": 81}]}]}))
    uc.apply(m, docs)
    if not i % 2 and i:
        uc.delete(m, [("x", "side")], missing_ok=True)
uc.delete(m, [("x", "side")], missing_ok=True)
print("done", flush=True)
"""


def test_100_updates_let_no_denied_packet_through_and_keep_established_flows(w, tmp_path):
    w.apply(doc("base", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a" or s.namespace == "y", ports=(("tcp", 80),))
    xa = w.pods["x/a"]
    stop = str(tmp_path / "stop")
    procs = []

    def start(pod: str, *args: str):
        p = subprocess.Popen(["ip", "netns", "exec", w.pods[pod].sandbox, sys.executable, "-c", FLOW, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        return p

    try:
        srv = start("x/a", "serve", "", stop)
        assert srv.stdout.readline().strip() == "ready"
        flow = start("y/a", "flow", xa.ip, stop)
        assert flow.stdout.readline().strip() == "connected"
        denied = [start(k, "probe", xa.ip, stop) for k in ("z/b", "x/b")]
        time.sleep(0.5)
        r = w.host.run(sys.executable, "-c", UPDATES, w.state, timeout=300)
        assert r.stdout.strip() == "done", r.stderr
        open(stop, "w").close()
        out = flow.communicate(timeout=30)[0].strip()
        assert out.startswith("ok "), out
        for p in denied:
            through, tries = map(int, p.communicate(timeout=30)[0].split())
            assert through == 0 and tries > 10, (through, tries)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    w.expect(lambda s, d, proto, port: d.key != "x/a" or s.namespace == "y", ports=(("tcp", 80),))

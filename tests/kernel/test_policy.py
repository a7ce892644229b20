"""Network policy with Kubernetes semantics, proven by the truth table (tests/kernel/netpol.py):
x, y, z with a, b, c each on one bridge network of a namespace that plays the host; each test
applies policies with `muslin policy apply`, changes labels with `muslin label` /
`muslin namespace label`, and compares the measured 9x9 matrix (TCP and UDP, 80 and 81) with
the one Kubernetes' semantics give."""

from __future__ import annotations

import json
import sys

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

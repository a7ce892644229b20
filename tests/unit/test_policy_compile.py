"""firewall/policy.py's compile, checked against its own direct evaluation (`evaluate`, the
semantics written over the policies): the set elements, looked up the way the chains do
(local address -> class through the map, then class . peer . proto . port), decide every
pair of a random cluster exactly as `evaluate` does. And the classes share the elements."""

from __future__ import annotations

import ipaddress
import random

import pytest

from muslin.firewall.policy import PolicyEndpoint, PolicyInput, class_ids, compile_policy, evaluate
from muslin.model.policy import Namespace, parse_policy


def pol(name: str, ns: str, spec: dict) -> object:
    return parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": ns}, "spec": spec})


def lookup(els: dict, d: str, local, peer, proto: str, port: int) -> bool:
    """What the netpol_{ingress,egress} chain decides for a new connection (local isolated in d)."""
    v = local.version
    if f"{local} . {peer}" in els[f"{d}_self{v}"]:
        return True
    ids = dict(e.split(" : ") for e in els[f"{d}_id{v}"])
    cid = ids[str(local)]
    if f"{cid} . {peer} . {proto} . {port}" in els[f"{d}_peer{v}"] or f"{cid} . {peer}" in els[f"{d}_peerall{v}"]:
        return True
    for e in els[f"{d}_net{v}"] | {x + " . any" for x in els[f"{d}_netall{v}"]}:
        c, net, *rest = e.split(" . ")
        if c != cid or peer not in ipaddress.ip_network(net):
            continue
        if rest == ["any"]:
            return True
        p, rng = rest
        lo, _, hi = rng.partition("-")
        if p == proto and int(lo) <= port <= int(hi or lo):
            return True
    return False


def decide(els: dict, src, dst, proto: str, port: int) -> bool:
    for d, local, peer in (("eg", src, dst), ("in", dst, src)):
        if str(local) in els[f"pol_{d}{local.version}"] and not lookup(els, d, local, peer, proto, port):
            return False
    return True


def random_input(rng: random.Random) -> PolicyInput:
    nss = ["x", "y", "z"]
    eps = []
    for i in range(12):
        ports = (("web", rng.choice([80, 81]), "tcp"),) if rng.random() < 0.5 else ()
        eps.append(PolicyEndpoint(key=f"n/e{i}", namespace=rng.choice(nss), name=f"e{i}",
                                  labels=(("pod", rng.choice("abc")),),
                                  addresses=(ipaddress.ip_address(f"10.9.0.{10 + i}"),), ports=ports,
                                  local=i < 9))
    peers = [{"podSelector": {"matchLabels": {"pod": "b"}}},
             {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
             {"namespaceSelector": {}, "podSelector": {"matchExpressions": [
                 {"key": "pod", "operator": "NotIn", "values": ["a"]}]}},
             {"ipBlock": {"cidr": "10.9.0.0/28", "except": ["10.9.0.12/30"]}}]
    ports = [[], [{"port": 80}], [{"port": "web"}], [{"port": 80, "endPort": 81}], [{"protocol": "UDP", "port": 81}]]
    pols = []
    for j in range(rng.randint(1, 4)):
        rules = [{"from" if k == "i" else "to": rng.sample(peers, rng.randint(0, 2)), "ports": rng.choice(ports)}
                 for k in rng.choice(["i", "e", "ie", "ii"])]
        spec = {"podSelector": {"matchLabels": {"pod": rng.choice("abc")}} if rng.random() < 0.7 else {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [r for r in rules if "from" in r], "egress": [r for r in rules if "to" in r]}
        pols.append(pol(f"p{j}", rng.choice(nss), spec))
    return PolicyInput(tuple(pols), (Namespace("y", (("ns", "y"),)),), tuple(eps))


@pytest.mark.parametrize("seed", range(40))
def test_compiled_sets_decide_as_evaluate(seed):
    inp = random_input(random.Random(seed))
    els = compile_policy(inp).elements
    local = [a for e in inp.endpoints if e.local for a in e.addresses]
    addrs = [a for e in inp.endpoints for a in e.addresses]
    for s in addrs:
        for d in addrs:
            if s == d or (s not in local and d not in local):
                continue
            for proto, port in (("tcp", 80), ("tcp", 81), ("udp", 81)):
                eg, ing = evaluate(inp, s, d, proto, port)
                want = (eg.allowed or s not in local) and (ing.allowed or d not in local)
                assert decide(els, s, d, proto, port) == want, (seed, str(s), str(d), proto, port)


def test_endpoints_of_one_class_share_their_peer_elements():
    eps = tuple(PolicyEndpoint(key=f"n/e{i}", namespace="x", labels=(("pod", "a" if i < 50 else "b"),),
                               addresses=(ipaddress.ip_address(f"10.9.1.{i + 1}"),)) for i in range(100))
    p = pol("p", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]}]})
    c = compile_policy(PolicyInput((p,), (), eps))
    assert len(c.classes) == 1
    assert len(c.elements["in_id4"]) == 50  # each selected address -> its class
    assert len(c.elements["in_peer4"]) == 50  # the 50 allowed peers once, not 50 x 50 pairs


def test_named_ports_split_classes_for_ingress_only():
    eps = (PolicyEndpoint("n/a", "x", (("pod", "a"),), (ipaddress.ip_address("10.9.2.1"),), (("web", 80, "tcp"),)),
           PolicyEndpoint("n/b", "x", (("pod", "a"),), (ipaddress.ip_address("10.9.2.2"),), (("web", 81, "tcp"),)))
    p = pol("p", "x", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                       "ingress": [{"ports": [{"port": "web"}]}], "egress": [{}]})
    c = compile_policy(PolicyInput((p,), (), eps))
    assert sorted(k[0] for k in c.classes) == ["eg", "in", "in"]


def test_class_ids_are_stable_nonzero_and_distinct():
    keys = [("in", (f"x/p{i}",), ()) for i in range(2000)]
    ids = class_ids(keys)
    assert ids == class_ids(reversed(keys))
    assert len(set(ids.values())) == len(keys) and 0 not in ids.values()
    assert all(0 < n < 2 ** 31 for n in ids.values())
    assert class_ids(keys[:10]) == {k: ids[k] for k in keys[:10]}  # adding classes keeps the others' ids


def test_no_interval_element_is_single_values_only():
    """nft 1.0.6 cannot delete such an element of a classid-keyed interval set: a /32 ipBlock
    on one port (or any port) goes to the hash sets instead."""
    eps = (PolicyEndpoint("n/a", "x", (("pod", "a"),), (ipaddress.ip_address("10.9.3.1"),)),)
    p = pol("p", "x", {"podSelector": {}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "172.16.0.2/32"}}], "ports": [{"port": 80}]},
        {"from": [{"ipBlock": {"cidr": "172.16.0.3/32"}}]},
        {"from": [{"ipBlock": {"cidr": "172.16.0.4/32"}}], "ports": [{"port": 80, "endPort": 81}]},
        {"from": [{"ipBlock": {"cidr": "fd00::5/128"}}], "ports": [{"port": 80}]}]})
    els = compile_policy(PolicyInput((p,), (), eps)).elements
    for name in ("in_net4", "in_netall4", "in_net6", "in_netall6"):
        for e in els[name]:
            assert "/" in e or "-" in e.split(" . ")[-1], (name, e)
    assert len(els["in_peer4"]) == 1 and len(els["in_peerall4"]) == 1 and len(els["in_net4"]) == 1
    assert len(els["in_peer6"]) == 1


@pytest.mark.parametrize("seed", range(40))
def test_interval_elements_never_overlap(seed):
    """The kernel refuses an interval element whose start or end lies in another one."""
    els = compile_policy(random_input(random.Random(seed))).elements
    for name in ("in_net4", "eg_net4", "in_netall4", "eg_netall4", "in_netall6", "eg_netall6"):
        boxes = []
        for e in els[name]:
            c, net, *rest = e.split(" . ")
            lo, _, hi = (rest[1] if rest else "0").partition("-")
            boxes.append((c, rest[0] if rest else "", ipaddress.ip_network(net), int(lo), int(hi or lo)))
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                same = a[:2] == b[:2] and a[2].overlaps(b[2]) and a[3] <= b[4] and b[3] <= a[4]
                assert not same, (name, a, b)

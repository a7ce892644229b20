"""NetworkPolicy documents (model/policy.py, no root): Kubernetes' shape accepted verbatim,
policyTypes inferred as Kubernetes does, and every invalid document refused with one line
naming the field; a batch with one bad document is refused whole (control/policy.parse_all)."""

from __future__ import annotations

import copy

import pytest

from muslin.control.policy import parse_all
from muslin.model.errors import Invalid
from muslin.model.policy import load_documents, parse_policy


def pol(**spec) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}, **spec}}


def test_a_kubernetes_document_is_accepted_verbatim_and_types_are_inferred():
    docs = load_documents("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x, labels: {app: web}, annotations: {note: hi}}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]}
      podSelector: {matchLabels: {pod: b}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{port: 80}, {protocol: UDP, port: 53, endPort: 60}, {port: web}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out}
spec: {podSelector: {}, egress: [{}]}
""", "f.yaml")
    web, out = parse_all(docs, "default", "f.yaml")
    assert web.key == "x/web" and out.key == "default/out"
    assert web.ingress_isolation and not web.egress_isolation
    assert out.egress_isolation and out.ingress_isolation  # egress rules present: [Ingress, Egress]


BAD = [
    ({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Like", "values": ["a"]}]}},
     "spec.podSelector.matchExpressions[0].operator"),
    ({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In"}]}},
     "spec.podSelector.matchExpressions[0].values"),
    ({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists", "values": ["a"]}]}},
     "spec.podSelector.matchExpressions[0].values"),
    ({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}, "spec.ingress[0].ports[0].endPort"),
    ({"ingress": [{"ports": [{"port": "web", "endPort": 90}]}]}, "spec.ingress[0].ports[0].endPort"),
    ({"ingress": [{"ports": [{"port": 70000}]}]}, "spec.ingress[0].ports[0].port"),
    ({"ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]}, "spec.ingress[0].ports[0].protocol"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]}, "spec.ingress[0].from[0].ipBlock.cidr"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except[0]"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.1/16"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except[0]"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "spec.ingress[0].from[0]"),
    ({"egress": [{"to": [{}]}]}, "spec.egress[0].to[0]"),
    ({"policyTypes": ["Sideways"]}, "spec.policyTypes[0]"),
    ({"ingres": []}, "spec.ingres"),
]


@pytest.mark.parametrize("spec,field", BAD, ids=[f for _, f in BAD])
def test_invalid_input_is_one_line_naming_the_field(spec, field):
    doc = pol(**spec)
    with pytest.raises(Invalid) as e:
        parse_policy(doc)
    msg = str(e.value)
    assert "\n" not in msg and f": {field}: " in msg, msg
    assert msg.startswith("policy x/p: ")


def test_bad_metadata_and_kind():
    for doc, field in ((dict(pol(), kind="Pod"), "kind"),
                       (dict(pol(), apiVersion="v1"), "apiVersion"),
                       ({**pol(), "metadata": {"name": "Bad_Name"}}, "metadata.name"),
                       ({**pol(), "spec": {}}, "spec.podSelector")):
        with pytest.raises(Invalid, match=f": {field}: "):
            parse_policy(doc)


def test_one_bad_document_refuses_the_whole_batch_naming_it():
    good = pol()
    bad = copy.deepcopy(pol(ingress=[{"ports": [{"port": 90, "endPort": 80}]}]))
    bad["metadata"]["name"] = "q"
    with pytest.raises(Invalid) as e:
        parse_all([good, bad], "default", "f.yaml")
    assert str(e.value).startswith("policy x/q: spec.ingress[0].ports[0].endPort: ")
    with pytest.raises(Invalid, match="also document 1"):
        parse_all([good, copy.deepcopy(good)], "default", "f.yaml")


def test_unparsable_text_names_the_line():
    with pytest.raises(Invalid, match=r"f.yaml: not YAML or JSON \(line 2"):
        load_documents("a: 1\n  b: [\n", "f.yaml")


def test_named_port_text():
    from muslin.model.types import NamedPort

    assert NamedPort.parse("web=80") == NamedPort("web", 80, "tcp")
    assert NamedPort.parse("dns=53/UDP") == NamedPort("dns", 53, "udp")
    for bad in ("web", "web=x", "web=/tcp"):
        with pytest.raises(Invalid, match=f"--expose '{bad}': use NAME=PORT"):
            NamedPort.parse(bad)

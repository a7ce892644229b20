"""Names, aliases, labels and namespaces of endpoints: the model, the label use-case (on the
fake kernel, with a failure injected at each write), the CLI and CNI parsing. No root."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faultkit import World  # noqa: E402

from muslin.cni.types import CniError, parse_request  # noqa: E402
from muslin.control import identity, sandboxes  # noqa: E402
from muslin.model import names  # noqa: E402
from muslin.model.errors import Invalid, MuslinError, NotFound  # noqa: E402
from muslin.model.types import Endpoint, IPRange, Network  # noqa: E402

NET = Network("n1", range_sets=((IPRange(ipaddress.ip_network("10.62.0.0/24")),),))


def test_endpoint_records_written_before_these_fields_read_back():
    old = {"network": "n", "endpoint_id": "e", "addresses": ["10.0.0.2/24"], "aliases": ["x"]}
    ep = Endpoint.from_dict(old)
    assert (ep.name, ep.labels, ep.namespace, ep.aliases) == ("", (), "default", ("x",))
    ep2 = Endpoint.from_dict({**ep.to_dict(), "name": "web", "labels": {"b": "2", "a": "1"}, "namespace": "prod"})
    assert ep2.labels == (("a", "1"), ("b", "2")) and Endpoint.from_dict(ep2.to_dict()) == ep2


def test_validators():
    for good in ("web", "api.internal", "my_svc", "a-b", "x1"):
        assert names.is_dns_name(good), good
    for bad in ("", "-a", "a-", "a..b", "a b", "1.2.3.4", "x" * 64, "a.", "é"):
        assert not names.is_dns_name(bad), bad
    assert names.is_label_key("app") and names.is_label_key("example.com/tier") and not names.is_label_key("-x")
    assert names.is_label_value("") and not names.is_label_value("a b") and not names.is_label_value("x" * 64)
    assert names.parse_label_changes(["a=1", "b-", "c="]) == ({"a": "1", "c": ""}, ["b"])
    for bad in (["a"], ["a=1", "a-"], ["=x"], ["k=v v"]):
        with pytest.raises(Invalid):
            names.parse_label_changes(bad)


def world(tmp_path) -> World:
    w = World(tmp_path)
    w.m.create_network(NET)
    sandboxes.create(w.m, "s1")
    return w


def test_connect_carries_name_aliases_labels_and_label_changes_every_copy(tmp_path):
    w = world(tmp_path)
    net2 = Network("n2", range_sets=((IPRange(ipaddress.ip_network("10.63.0.0/24")),),))
    w.m.create_network(net2)
    ep = sandboxes.connect(w.m, "n1", "s1", aliases=("api", "api"), labels={"app": "web"})
    assert (ep.name, ep.aliases, ep.labels, ep.namespace) == ("s1", ("api",), (("app", "web"),), "default")
    sandboxes.connect(w.m, "n2", "s1")
    assert sandboxes.label(w.m, "s1", {"tier": "front"}, ["app"]) == {"tier": "front"}
    for e in sandboxes.endpoints_of(w.m, "s1"):
        assert e.labels == (("tier", "front"),), e.network
    assert "nameserver 10.62.0.1" in w.kernel.resolv["s1"] and "nameserver 10.63.0.1" in w.kernel.resolv["s1"]
    sandboxes.disconnect(w.m, "n2", "s1")
    assert "10.63.0.1" not in w.kernel.resolv["s1"]
    sandboxes.remove(w.m, "s1")
    assert "s1" not in w.kernel.resolv


def test_bad_alias_or_label_changes_nothing(tmp_path):
    w = world(tmp_path)
    before = w.snapshot()
    for kw in ({"aliases": ("no spaces",)}, {"labels": {"k": "v v"}}):
        with pytest.raises(Invalid):
            sandboxes.connect(w.m, "n1", "s1", **kw)
        assert w.snapshot() == before
    with pytest.raises(NotFound):
        sandboxes.label(w.m, "nope", {"a": "b"}, [])


def test_label_is_all_or_nothing_at_each_failing_write(tmp_path):
    w0 = world(tmp_path / "calls")
    sandboxes.connect(w0.m, "n1", "s1")
    w0.kernel.arm(None)
    sandboxes.label(w0.m, "s1", {"a": "1"}, [])
    calls = w0.kernel.calls_since_armed
    assert calls
    for i in range(len(calls)):
        w = world(tmp_path / f"w{i}")
        sandboxes.connect(w.m, "n1", "s1")
        before = w.snapshot()
        w.kernel.arm(i)
        with pytest.raises(MuslinError):
            sandboxes.label(w.m, "s1", {"a": "1"}, [])
        w.kernel.arm(None)
        assert w.snapshot() == before


def test_identity_update_and_a_detached_endpoint(tmp_path):
    w = world(tmp_path)
    ep = sandboxes.connect(w.m, "n1", "s1")
    got = identity.update(w.m, "n1", ep.endpoint_id, name="other", aliases=("a1",), set_labels={"x": "y"})
    assert (got.name, got.aliases, got.labels) == ("other", ("a1",), (("x", "y"),))
    assert w.m.find_endpoint("n1", ep.endpoint_id) == got
    sandboxes.disconnect(w.m, "n1", "s1")
    with pytest.raises(NotFound):
        identity.update(w.m, "n1", ep.endpoint_id, name="z")


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/x",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=shop"}


def conf(**kw) -> bytes:
    base = {"cniVersion": "1.0.0", "name": "net1", "type": "muslin-cni",
            "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": "10.88.0.0/24"}]]}}
    base.update(kw)
    return json.dumps(base).encode()


def test_cni_name_namespace_labels_annotations_aliases():
    r = parse_request(ENV, conf(
        args={"cni": {"labels": [{"key": "app", "value": "shop"}, {"key": "tier", "value": "db"}]}},
        runtimeConfig={"aliases": {"net1": ["db", "primary"]},
                       "io.kubernetes.cri.pod-annotations": {"tier": "x", "team": "blue",
                                                             "kubectl.kubernetes.io/last-applied": "{\"a\": 1}"}}))
    assert (r.pod_name, r.namespace, r.aliases) == ("web-0", "shop", ("db", "primary"))
    # args.cni.labels win over annotations; an annotation that is no label is left out
    assert r.labels == (("app", "shop"), ("team", "blue"), ("tier", "db"))
    plain = parse_request({**ENV, "CNI_ARGS": ""}, conf())
    assert (plain.pod_name, plain.namespace, plain.labels) == ("", "default", ())


@pytest.mark.parametrize("kw, needle", [
    ({"args": {"cni": {"labels": "app=x"}}}, "args.cni.labels"),
    ({"args": {"cni": {"labels": [{"key": "bad key", "value": "x"}]}}}, "args.cni.labels[0]"),
    ({"runtimeConfig": {"aliases": ["not a name"]}}, "runtimeConfig.aliases"),
])
def test_cni_bad_identity_is_one_clear_error(kw, needle):
    with pytest.raises(CniError) as ei:
        parse_request(ENV, conf(**kw))
    assert needle in ei.value.message


def test_cni_bad_namespace():
    with pytest.raises(CniError) as ei:
        parse_request({**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=Bad_NS"}, conf())
    assert ei.value.cni_code == 4 and "K8S_POD_NAMESPACE" in ei.value.message


def test_docker_identity_from_dockerd_answers():
    from muslin.docker.names import identity_of

    net = {"Name": "web", "Containers": {"c" * 64: {"Name": "api", "EndpointID": "e1"}}}
    ctr = {"Id": "c" * 64, "Name": "/api", "Config": {"Labels": {"app": "shop", "com.example.hash": "x" * 64}},
           "NetworkSettings": {"Networks": {"web": {"EndpointID": "e1", "Aliases": ["cccccccccccc", "api", "db"]},
                                            "other": {"EndpointID": "e2", "Aliases": ["elsewhere"]}}}}
    got = identity_of(net, ctr, "e1")
    assert got["name"] == "api" and got["aliases"] == ("cccccccccccc", "db") and got["labels"] == {"app": "shop"}

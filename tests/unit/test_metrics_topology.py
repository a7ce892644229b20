"""muslind's metrics from events (no root): the phase timings feed the histograms, errors by
kind, reconciles and drift repairs, store calls, the DNS and policy hooks; state gauges
from a store at scrape time. The topology drawn as SVG, DOT and the self-contained page."""

from __future__ import annotations

import ipaddress
import json

from prometheus_client.parser import text_string_to_metric_families

from muslin import events
from muslin.control import metrics, topology, topology_render
from muslin.control.timings import NFT_PHASE, Timings
from muslin.model.types import Endpoint, IPRange, Network, PortMapping
from muslin.store import open_store


def samples(m: metrics.Metrics) -> dict:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_events_feed_the_metrics_and_stop_when_closed():
    m = metrics.Metrics()
    m.listen()
    try:
        t = Timings()
        with t.timed("attach (all)"):
            pass
        try:
            with t.timed(NFT_PHASE):
                raise RuntimeError("nft refused")
        except RuntimeError:
            pass
        events.emit("cni_request", plugin="cni", verb="ADD", rc=0, seconds=0.003)
        events.emit("cni_request", plugin="cni", verb="ADD", rc=1, seconds=0.002)
        events.emit("error", source="cni", kind="exhausted")
        events.emit("docker_request", method="NetworkDriver.Join", seconds=0.01, error="")
        events.emit("reconcile", loop="cluster", seconds=0.02, changes=3, drift=True)
        events.emit("store", backend="etcd", op="txn", seconds=0.001, ok=False)
        events.emit("watch_lag", network="net0", seconds=0.05)
        events.emit("dns_query", qtype="A", rcode="NOERROR", seconds=0.0004)
        events.emit("policy_drop", network="web", n=5)
        events.emit("no_such_event", x=1)  # unknown events are ignored
        s = samples(m)
    finally:
        m.close()
    assert s[("muslin_phase_duration_seconds_count", (("phase", "attach (all)"),))] == 1
    assert s[("muslin_nft_transaction_duration_seconds_count", ())] == 1
    assert s[("muslin_nft_transaction_failures_total", ())] == 1
    assert s[("muslin_cni_requests_total", (("plugin", "cni"), ("result", "ok"), ("verb", "ADD")))] == 1
    assert s[("muslin_cni_requests_total", (("plugin", "cni"), ("result", "error"), ("verb", "ADD")))] == 1
    assert s[("muslin_cni_request_duration_seconds_count", (("plugin", "cni"), ("verb", "ADD")))] == 2
    assert s[("muslin_errors_total", (("kind", "exhausted"), ("source", "cni")))] == 1
    assert s[("muslin_docker_requests_total", (("method", "NetworkDriver.Join"), ("result", "ok")))] == 1
    assert s[("muslin_reconcile_changes_total", (("loop", "cluster"),))] == 3
    assert s[("muslin_drift_repairs_total", (("loop", "cluster"),))] == 1
    assert s[("muslin_store_request_failures_total", (("backend", "etcd"), ("op", "txn")))] == 1
    assert s[("muslin_watch_lag_seconds_count", (("network", "net0"),))] == 1
    assert s[("muslin_dns_queries_total", (("answered", "local"), ("qtype", "A"), ("rcode", "NOERROR")))] == 1
    assert s[("muslin_policy_drops_total", (("network", "web"),))] == 5
    assert not events.LISTENERS
    events.emit("error", source="cni", kind="invalid")  # nobody listens: nothing happens
    assert ("muslin_errors_total", (("kind", "invalid"), ("source", "cni"))) not in samples(m)


class FakeMuslin:
    def __init__(self) -> None:
        self.store = open_store("memory://")
        self.net = Network(name="web", driver="bridge", bridge="mus-web",
                           range_sets=((IPRange(ipaddress.ip_network("10.9.0.0/24"),
                                                gateway=ipaddress.ip_address("10.9.0.1")),),))
        self.ep = Endpoint(network="web", endpoint_id="c1/eth0", container_id="c1", ifname="eth0",
                           netns="/run/netns/c1", host_ifname="mv1", mac="02:00:00:00:00:01",
                           addresses=(ipaddress.ip_interface("10.9.0.2/24"),),
                           ports=(PortMapping(8080, 80),))
        self.store.put("networks/web", self.net.to_dict())
        self.store.put("endpoints/web/c1%2Feth0", self.ep.to_dict())
        self.store.put("ipam/10.9.0.0_24/ip/10.9.0.2", {"owner": "cni/c1/eth0"})

    def list_networks(self):
        return [self.net]

    def endpoints(self, network=None):
        return [self.ep]


def test_state_gauges_at_scrape_time():
    m = metrics.Metrics()
    m.sources.add(metrics.local_source(FakeMuslin))
    m.sources.add(lambda: 1 / 0)  # a failing source is left out, the scrape still answers
    s = samples(m)
    assert s[("muslin_endpoints", (("network", "web"),))] == 1
    assert s[("muslin_networks", (("driver", "bridge"),))] == 1
    assert s[("muslin_ipam_addresses_allocated", (("network", "web"), ("subnet", "10.9.0.0/24")))] == 1
    assert s[("muslin_ipam_addresses_allocatable", (("network", "web"), ("subnet", "10.9.0.0/24")))] == 253


def three_hosts() -> dict:
    local = topology.local_summary(FakeMuslin(), "h1")
    other = {"host": "h2", "networks": [{**local["networks"][0], "id": "net:h2/web", "host": "h2"}],
             "sandboxes": [{**local["sandboxes"][0], "id": "sb:h2/c2", "host": "h2", "name": "c2"}]}
    view = {"network": "web", "config": {"backend": "vxlan", "vni": 7, "port": 4789, "cidr": "10.9.0.0/16"},
            "hosts": {"h1": {"underlay": "10.250.0.1", "subnet": "10.9.0.0/24"},
                      "h2": {"underlay": "10.250.0.2", "subnet": "10.9.1.0/24"},
                      "h3": {"underlay": "10.250.0.3", "subnet": "10.9.2.0/24"}},
            "alive": ["h1", "h2"], "summaries": {"h2": other}}
    return topology.build("h1", local, [view])


def test_topology_graph_and_its_drawings():
    t = three_hosts()
    assert [h["name"] for h in t["hosts"]] == ["h1", "h2", "h3"]
    assert [h["alive"] for h in t["hosts"]] == [True, True, False]
    assert [s["id"] for s in t["sandboxes"]] == ["sb:h1/c1", "sb:h2/c2"]
    assert t["sandboxes"][0]["interfaces"][0]["ports"] == [{"hostPort": 8080, "containerPort": 80,
                                                            "protocol": "tcp", "hostIP": ""}]
    assert len(t["tunnels"]) == 3 and all(x["vni"] == 7 for x in t["tunnels"])
    svg = topology_render.to_svg(t)
    for i in ("host:h1", "host:h3", "net:h1/web", "net:h2/web", "sb:h1/c1", "sb:h2/c2", "tun:web/h1-h3"):
        assert f'id="{i}"' in svg
    assert 'class="host down"' in svg and "*:8080-&gt;80/tcp" in svg
    dot = topology_render.to_dot(t)
    assert dot.startswith("digraph muslin {") and '"sb:h2/c2"' in dot and "VNI 7" in dot
    page = topology_render.to_html(t)
    assert page.startswith("<!doctype html>") and svg in page and 'fetch("topology.svg"' in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    json.dumps(t)  # plain data

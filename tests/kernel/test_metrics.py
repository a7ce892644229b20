"""muslind --metrics-address: /metrics scraped before and after 20 CNI ADD/DEL pairs that go
through muslind's agent socket (real veths, a real bridge, real packets): the per-verb
counters and histograms moved by exactly 20; errors by kind; endpoints and IPAM pool
usage read from the store; nft transactions, plan phases and store calls measured; the
topology endpoints answer."""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nsutil import VENV_BIN, Muslind, suffix, tool

pytestmark = [pytest.mark.kernel]

ADDR = "127.0.0.1:9473"  # the host namespace's own loopback: no other test shares it
GET = r"""
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=30) as r:
    sys.stdout.write(r.headers.get("Content-Type", "") + "\n" + r.read().decode())
"""


def get(ns, path: str) -> tuple[str, str]:
    out = ns.run(VENV_BIN / "python", "-c", GET, f"http://{ADDR}{path}", timeout=60).stdout
    ctype, _, body = out.partition("\n")
    return ctype, body


def scrape(ns) -> dict[tuple[str, tuple], float]:
    """sample name + sorted labels -> value."""
    _, text = get(ns, "/metrics")
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)


def total(m: dict, name: str, **labels) -> float:
    """Sum over every sample of that name whose labels include these."""
    want = {k: str(v) for k, v in labels.items()}
    return sum(v for (n, ls), v in m.items() if n == name and want.items() <= dict(ls).items())


class Cni:
    def __init__(self, host, state, sock):
        self.host, self.state, self.sock = host, state, sock
        self.net = "met" + suffix(4)
        o2, o3 = random.randint(100, 250), random.randint(0, 255)
        self.conf = json.dumps({"cniVersion": "1.0.0", "name": self.net, "type": "muslin-cni",
                                "bridge": "mb" + suffix(6), "isGateway": True, "ipMasq": True,
                                "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": f"10.{o2}.{o3}.0/24"}]],
                                         "routes": [{"dst": "0.0.0.0/0"}]}})

    def call(self, cmd: str, cid: str, netns: str, conf: str | None = None) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0", "CNI_PATH": str(VENV_BIN), "MUSLIN_AGENT_SOCKET": str(self.sock),
               "MUSLIN_STATE_DIR": str(self.state)}
        return self.host.run("env", "-i", *[f"{k}={v}" for k, v in env.items()], tool("muslin-cni"),
                             input=conf or self.conf, check=False, timeout=120)


def test_metrics_move_by_exactly_the_requests_served(netns, tmp_path):
    host, c = netns("host"), netns("c")
    state = tmp_path / "state"
    with Muslind(host, state, "--metrics-address", ADDR) as d:
        cni = Cni(host, state, d.sock)
        r = cni.call("ADD", "warm", c.path)  # the network is made by the first ADD
        assert r.returncode == 0, r.stdout + r.stderr
        gw = json.loads(r.stdout)["ips"][0]["gateway"]
        assert c.ping(gw)
        m = scrape(host)
        assert value(m, "muslin_endpoints", network=cni.net) == 1
        assert value(m, "muslin_ipam_addresses_allocated", network=cni.net,
                     subnet=json.loads(cni.conf)["ipam"]["ranges"][0][0]["subnet"]) == 1
        assert value(m, "muslin_ipam_addresses_allocatable", network=cni.net,
                     subnet=json.loads(cni.conf)["ipam"]["ranges"][0][0]["subnet"]) == 253
        assert cni.call("DEL", "warm", c.path).returncode == 0

        before = scrape(host)
        for i in range(20):
            r = cni.call("ADD", f"ctr{i}", c.path)
            assert r.returncode == 0, r.stdout + r.stderr
            assert c.ping(gw), f"ADD {i}: no ping to the gateway"
            assert cni.call("DEL", f"ctr{i}", c.path).returncode == 0
        after = scrape(host)

        for verb in ("ADD", "DEL"):
            for name in ("muslin_cni_requests_total", "muslin_cni_request_duration_seconds_count"):
                labels = {"plugin": "cni", "verb": verb}
                if name.startswith("muslin_cni_requests"):
                    labels["result"] = "ok"
                delta = value(after, name, **labels) - value(before, name, **labels)
                assert delta == 20, (name, verb, delta)
        assert total(after, "muslin_cni_requests_total", result="error") == \
            total(before, "muslin_cni_requests_total", result="error")
        # the same measurements as the phase timings: 20 attaches and 20 detaches
        assert value(after, "muslin_phase_duration_seconds_count", phase="attach (all)") - \
            value(before, "muslin_phase_duration_seconds_count", phase="attach (all)") == 20
        assert value(after, "muslin_phase_duration_seconds_count", phase="detach (all)") - \
            value(before, "muslin_phase_duration_seconds_count", phase="detach (all)") == 20
        assert value(after, "muslin_nft_transaction_duration_seconds_count") >= 1
        assert value(after, "muslin_nft_transaction_failures_total") == 0
        assert total(after, "muslin_store_request_duration_seconds_count", backend="sqlite") > \
            total(before, "muslin_store_request_duration_seconds_count", backend="sqlite")
        assert value(after, "muslin_endpoints", network=cni.net) == 0

        # errors by kind: a netns that does not exist, and a config that is not JSON
        assert cni.call("ADD", "ghost", "/run/netns/none-" + suffix()).returncode != 0
        assert cni.call("ADD", "bad", c.path, conf="{not json").returncode != 0
        errs = scrape(host)
        # both are the request's fault: kind invalid (a CNI code of their own), nothing else counted
        assert value(errs, "muslin_errors_total", source="cni", kind="invalid") - \
            value(after, "muslin_errors_total", source="cni", kind="invalid") == 2
        assert total(errs, "muslin_errors_total") - total(after, "muslin_errors_total") == 2
        assert value(errs, "muslin_cni_requests_total", plugin="cni", verb="ADD", result="error") - \
            value(after, "muslin_cni_requests_total", plugin="cni", verb="ADD", result="error") == 2

        assert cni.call("ADD", "keep", c.path).returncode == 0  # a CNI network lives while it has endpoints
        ctype, text = get(host, "/metrics")
        assert ctype.startswith("text/plain") and "# HELP muslin_cni_requests_total" in text
        ctype, body = get(host, "/topology.json")
        assert ctype == "application/json"
        t = json.loads(body)
        assert any(n["name"] == cni.net for n in t["networks"])
        assert [s["name"] for s in t["sandboxes"]] == ["keep"]
        ctype, page = get(host, "/topology")
        assert ctype.startswith("text/html") and cni.net in page and "<svg" in page
        assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing external
        assert cni.call("DEL", "keep", c.path).returncode == 0

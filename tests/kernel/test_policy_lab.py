"""Network policy across hosts: a 2-host vxlan lab (real etcd, one muslind per host), x's
sandboxes on h1 and y's on h2. Policies and namespace labels are written to the cluster store
(`muslin policy --cluster-store`), labels changed on the sandbox's own host (`muslin lab
label`); each host enforces what applies to its local endpoints with the other host's
endpoints in its sets. The truth table of tests/kernel/netpol.py measures it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from netpol import SERVER, Pod, World, everyone
from nsutil import sh, suffix, tool

from muslin.lab import core

pytestmark = [pytest.mark.kernel, pytest.mark.client]

PLACES = {"x": "h1", "y": "h2"}


def lab_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "muslin.lab", *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"lab {' '.join(args)}: {r.stderr}{r.stdout}"
    return r


class LabWorld(World):
    """The truth table on a lab: pods are lab sandboxes; objects go to the cluster store."""

    def cluster(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        st = core.LabState.load(self.lab)
        r = sh("ip", "netns", "exec", core.ns_host(self.lab, "h1"), tool("muslin"), "--state-dir",
               str(st.host_dir("h1")), *args[:1], "--cluster-store", st.store_url, *args[1:], input=input,
               check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"muslin {' '.join(args)}: {r.stderr.strip()}")
        return r

    def add_lab_pod(self, namespace: str, name: str) -> Pod:
        sb = f"{namespace}{name}"
        lab_cli("sandbox", self.lab, PLACES[namespace], sb, "--namespace", namespace, "--label", f"pod={name}",
                "--expose", f"web={80 if name == 'a' else 81}/tcp")
        info = core.LabState.load(self.lab).sandboxes[sb]
        pod = Pod(namespace, name, info["netns"], info["address"].split("/")[0])
        pod.lab_name = sb
        pod.server = subprocess.Popen(["ip", "netns", "exec", pod.sandbox, sys.executable, "-c", SERVER],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pods[pod.key] = pod
        return pod

    def apply(self, text: str) -> str:
        return self.cluster("policy", "apply", "-f", "-", input=text).stdout

    def label(self, key: str, **changes: str | None) -> None:
        lab_cli("label", self.lab, self.pods[key].lab_name,
                *[f"{k}={v}" if v is not None else f"{k}-" for k, v in changes.items()])

    def label_namespace(self, namespace: str, **changes: str | None) -> None:
        self.cluster("namespace", "label", namespace, *[f"{k}={v}" if v is not None else f"{k}-" for k, v in changes.items()])

    def stop_servers(self) -> None:
        for p in self.pods.values():
            if p.server:
                p.server.kill()
                p.server.wait()


@pytest.fixture(scope="module")
def lw(tmp_path_factory):
    d = tmp_path_factory.mktemp("labs")
    old = os.environ.get("MUSLIN_LAB_DIR")
    os.environ["MUSLIN_LAB_DIR"] = str(d)
    name = "p" + suffix()
    w = LabWorld(host=None, state="")
    w.lab = name
    try:
        lab_cli("up", name, "--hosts", "2", "--backend", "vxlan")
        for ns in PLACES:
            for p in ("a", "b"):
                w.add_lab_pod(ns, p)
        w.wait_servers()
        w.label_namespace("x", ns="x")
        w.label_namespace("y", ns="y")
        yield w
    finally:
        w.stop_servers()
        core.down(name)
        if old is None:
            os.environ.pop("MUSLIN_LAB_DIR", None)
        else:
            os.environ["MUSLIN_LAB_DIR"] = old
    assert not [n for n in core.netns_list() if n.startswith(f"mlab-{name}-")]


def doc(name: str, ns: str, spec: str) -> str:
    return f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n" \
           f"spec:\n{spec}\n---\n"


def test_policy_selectors_label_changes_and_named_ports_across_two_hosts(lw):
    w = lw
    w.expect(everyone, deadline=30)
    # enforced on h1 (x's host) with h2's endpoints in its sets
    w.apply(doc("from-yb", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                                "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}},"
                                " podSelector: {matchLabels: {pod: b}}}]}]"))
    w.expect(lambda s, d, proto, port: d.key != "x/a" or s.key == "y/b", deadline=30)
    # a label change on h2 enforced on h1
    w.apply(doc("clients", "x", "  podSelector: {matchLabels: {pod: b}}\n"
                                "  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]}]"))
    w.expect(lambda s, d, proto, port: (d.key != "x/a" or s.key == "y/b") and d.key != "x/b")
    w.label("y/a", role="client")
    w.expect(lambda s, d, proto, port: (d.key != "x/a" or s.key == "y/b") and (d.key != "x/b" or s.key == "y/a"))
    w.label("y/a", role=None)
    w.expect(lambda s, d, proto, port: (d.key != "x/a" or s.key == "y/b") and d.key != "x/b")
    w.cluster("policy", "delete", "x/clients", "x/from-yb")
    w.expect(everyone)
    # egress of y (enforced on h2) to a namespace whose label changes
    w.apply(doc("out", "y", "  podSelector: {}\n  policyTypes: [Egress]\n"
                            "  egress: [{to: [{namespaceSelector: {matchLabels: {team: blue}}}]}]"))
    w.expect(lambda s, d, proto, port: s.namespace != "y")
    w.label_namespace("x", team="blue")
    w.expect(lambda s, d, proto, port: s.namespace != "y" or d.namespace == "x")
    w.label_namespace("x", team=None)
    w.expect(lambda s, d, proto, port: s.namespace != "y")
    w.cluster("policy", "delete", "y/out")
    w.expect(everyone)
    # egress of x (enforced on h1) on a named port that h2's endpoints declare (a: 80, b: 81)
    w.apply(doc("web", "x", "  podSelector: {}\n  policyTypes: [Egress]\n"
                            "  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: web}]}]"))
    w.expect(lambda s, d, proto, port: s.namespace != "x"
             or (d.namespace == "y" and proto == "tcp" and port == (80 if d.name == "a" else 81)))
    w.cluster("policy", "delete", "x/web")
    w.expect(everyone)

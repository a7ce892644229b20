"""The Kubernetes path: containerd's CRI plugin runs pods on muslin-cni, driven through the CRI
v1 API as a kubelet does (RunPodSandbox, CreateContainer, StartContainer, ExecSync, Stop and
Remove), with muslind answering the plugin and without it: pods ping each other, a hostPort
answers on 127.0.0.1, and stop + remove leaves nothing (no endpoint, address, network,
link, nft table or pod netns).

containerd is a private instance (own socket, root and state; tests/clients/cri_util.py)
run in a namespace that plays the host, so Muslin's bridge and table are made there; it
holds root_ns_lock for its whole run all the same (containerd, runc and the shims share
the machine's mounts, cgroups and /run/netns)."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import pytest

from cri_util import CONTAINERD, IMAGE, Containerd, busybox_image, load_cri
from docker_util import root_ns_lock
from nsutil import VENV_BIN, Muslind, suffix

pytestmark = [pytest.mark.kernel, pytest.mark.client]

HOST_PORT = 18080
CONNECT = r"""
import socket, sys, time
end = time.time() + 30
while True:
    try:
        c = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
        data = c.recv(100)
        if data:
            print(data.decode().strip()); break
    except OSError:
        pass
    if time.time() > end:
        sys.exit("no answer on 127.0.0.1:" + sys.argv[1])
    time.sleep(0.3)
"""


def _pods_netns() -> set[str]:
    return {p.name for p in Path("/run/netns").glob("cni-*")}


@pytest.fixture(scope="module")
def cri(tmp_path_factory):
    if not os.path.exists(CONTAINERD):
        pytest.skip("containerd is not installed (scripts/setup.sh installs Debian's containerd)")
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (pip install -e .[test])")
    return load_cri(tmp_path_factory.mktemp("cri"))


@pytest.mark.parametrize("with_muslind", [True, False], ids=["muslind", "in-process"])
def test_pods_on_muslin_cni_through_containerd_cri(cri, netns, tmp_path, with_muslind):
    import grpc

    pb, rpc = cri
    o2, o3 = random.randint(100, 250), random.randint(0, 255)
    subnet = f"10.{o2}.{o3}.0/24"
    with root_ns_lock():
        host = netns("host")
        state, bin_dir, conf_dir, ctd = (tmp_path / n for n in ("state", "bin", "conf", "ctd"))
        for d in (state, bin_dir, conf_dir, ctd):
            d.mkdir()
        for p in ("muslin-cni", "muslin-ipam"):
            (bin_dir / p).symlink_to(VENV_BIN / p)
        (bin_dir / "loopback").symlink_to("/usr/lib/cni/loopback")  # the CRI plugin sets up lo with it
        daemon = Muslind(host, state) if with_muslind else None
        sock = str(daemon.sock) if daemon else str(tmp_path / "no-muslind.sock")
        net = "k8s" + suffix(4)
        (conf_dir / "10-muslin.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": net, "plugins": [{
                "type": "muslin-cni", "bridge": "mk" + suffix(6), "isGateway": True, "ipMasq": True,
                "dataDir": str(state), "agentSocket": sock, "capabilities": {"portMappings": True},
                "ipam": {"type": "muslin-ipam", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}))
        before_ns = _pods_netns()
        cgroup = "/muslin-cri-" + suffix(8)  # the pods' cgroup parent: removed at the end
        c = Containerd(ctd, bin_dir, conf_dir, host.path)
        rt = None
        try:
            c.ctr("images", "import", str(busybox_image(tmp_path / "busybox.tar", ["/bin/sleep", "3600"])))
            ch = grpc.insecure_channel(f"unix://{c.sock}")
            rt = rpc.RuntimeServiceStub(ch)
            assert rt.Version(pb.VersionRequest(version="v1"), timeout=30).runtime_api_version == "v1"
            pods = {}
            for name, ports in (("a", []), ("b", [pb.PortMapping(protocol=pb.TCP, container_port=8080,
                                                                  host_port=HOST_PORT)])):
                cfg = pb.PodSandboxConfig(
                    metadata=pb.PodSandboxMetadata(name=name, uid=suffix(8), namespace="muslin-test", attempt=0),
                    hostname=name, log_directory=str(tmp_path / f"logs-{name}"), port_mappings=ports,
                    linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup))
                pid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=120).pod_sandbox_id
                st = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pid, verbose=True), timeout=30)
                assert st.status.state == pb.SANDBOX_READY
                ip = st.status.network.ip
                assert ip.startswith(f"10.{o2}.{o3}."), st.status.network
                cmd = (["/bin/sh", "-c", "while true; do echo hello-from-b | nc -l -p 8080; done"] if name == "b"
                       else ["/bin/sleep", "3600"])
                ccfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="main"), image=pb.ImageSpec(image=IMAGE),
                                          command=cmd, log_path="main.log", linux=pb.LinuxContainerConfig())
                cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pid, config=ccfg,
                                                                   sandbox_config=cfg), timeout=120).container_id
                rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
                info = json.loads(st.info["info"])
                netns_path = next(n["path"] for n in info["runtimeSpec"]["linux"]["namespaces"] if n["type"] == "network")
                pods[name] = {"sandbox": pid, "container": cid, "ip": ip, "netns": netns_path}

            # the store saw both pods through muslin-cni (muslind's or in-process)
            eps = _endpoints(host, state)
            assert sorted(e["netns"] for e in eps) == sorted(p["netns"] for p in pods.values())

            for src, dst in (("a", "b"), ("b", "a")):
                r = rt.ExecSync(pb.ExecSyncRequest(container_id=pods[src]["container"],
                                                   cmd=["ping", "-c", "2", "-W", "2", pods[dst]["ip"]], timeout=30),
                                timeout=60)
                assert r.exit_code == 0, (src, dst, r.stdout, r.stderr)
            r = host.run(sys.executable, "-c", CONNECT, str(HOST_PORT), timeout=60, check=False)
            assert r.returncode == 0 and r.stdout.strip() == "hello-from-b", r.stdout + r.stderr

            for p in pods.values():
                rt.StopContainer(pb.StopContainerRequest(container_id=p["container"], timeout=2), timeout=60)
                rt.RemoveContainer(pb.RemoveContainerRequest(container_id=p["container"]), timeout=60)
                rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=p["sandbox"]), timeout=60)
                rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p["sandbox"]), timeout=60)
            assert not rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
        finally:
            if rt is not None:  # a failure half-way: take down what was made, as a kubelet would
                _remove_all(pb, rt)
            c.stop()
            c.cleanup()
            _last_resort(before_ns, cgroup)
        # nothing left: no endpoint, address or network in the store, no pod netns, no link but lo,
        # no nft table (the CNI network went with its last pod; muslind's reaper deletes the veths)
        assert _endpoints(host, state) == []
        assert _pods_netns() <= before_ns
        deadline = time.monotonic() + 20
        while host.links() != ["lo"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert host.links() == ["lo"]
        assert host.run("nft", "list", "table", "inet", "muslin", check=False).returncode != 0
        assert _keys(host, state) == []
        if daemon:
            daemon.stop()


def _remove_all(pb, rt) -> None:
    try:
        for ctr in rt.ListContainers(pb.ListContainersRequest(), timeout=30).containers:
            rt.StopContainer(pb.StopContainerRequest(container_id=ctr.id, timeout=1), timeout=60)
            rt.RemoveContainer(pb.RemoveContainerRequest(container_id=ctr.id), timeout=60)
        for sb in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
            rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sb.id), timeout=60)
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sb.id), timeout=60)
    except Exception:  # noqa: BLE001 - the last resort below still runs
        pass


def _last_resort(before_ns: set[str], cgroup: str) -> None:
    """Pods' processes and netns this test's containerd left (none when the test passed), and
    the pods' cgroup parent."""
    import subprocess

    for ns in _pods_netns() - before_ns:
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for root in Path("/sys/fs/cgroup").glob("*"):
        d = root / cgroup.lstrip("/")
        if d.is_dir():
            for sub in sorted(d.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir():
                    try:
                        sub.rmdir()
                    except OSError:
                        pass
            try:
                d.rmdir()
            except OSError:
                pass


SHOW = r"""
import json, sys
from muslin.store import open_store
s = open_store(sys.argv[1])
print(json.dumps({"endpoints": [kv.value for kv in s.list("endpoints/")],
                  "keys": [k for k in s.keys("") if k.startswith(("networks/", "endpoints/", "ipam-owner/"))
                           or (k.startswith("ipam/") and "/ip/" in k)]}))  # (the round-robin cursor stays)
"""


def _show(host, state) -> dict:
    return json.loads(host.run(sys.executable, "-c", SHOW, str(state)).stdout)


def _endpoints(host, state) -> list:
    return _show(host, state)["endpoints"]


def _keys(host, state) -> list:
    return _show(host, state)["keys"]

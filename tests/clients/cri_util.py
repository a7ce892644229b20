"""The Kubernetes path without a kubelet: a private containerd (Debian's, with its CRI plugin)
and a CRI v1 client, as a kubelet would drive it.

The CRI client: the CRI v1 API (package runtime.v1, kubernetes/cri-api's
pkg/apis/runtime/v1/api.proto) is taken from the containerd binary under test itself (Go
programs carry the descriptor of every protobuf file they register, gzipped), written as a
descriptor set, and compiled with grpcio-tools into a temporary directory at test time.
Nothing fetched, nothing generated is kept: the client always matches the containerd here.

The image: a docker-archive tar made here of busybox-static (/bin/busybox and its applets'
links), imported with `ctr images import`; it is the pods' sandbox image and their
containers' image. No registry is reached.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

CONTAINERD = "/usr/bin/containerd"
IMAGE = "muslin.test/busybox:1"
APPLETS = ("sh", "sleep", "ping", "nc", "echo", "cat", "ip", "true")


def cri_descriptor(binary: str = CONTAINERD) -> bytes:
    """The serialized FileDescriptorProto of runtime.v1's api.proto found in the binary."""
    data = Path(binary).read_bytes()
    for m in re.finditer(rb"\x1f\x8b\x08\x00\x00\x00\x00\x00", data):
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[m.start():m.start() + (4 << 20)])
        except zlib.error:
            continue
        if raw.startswith(b"\n\tapi.proto\x12\nruntime.v1\x1a"):
            return raw
    raise LookupError(f"{binary} carries no CRI v1 API descriptor (runtime.v1 api.proto)")


def load_cri(tmp: Path, binary: str = CONTAINERD):
    """(api_pb2, api_pb2_grpc) compiled with grpcio-tools from the binary's CRI v1 descriptor."""
    from google.protobuf import descriptor_pb2

    fd = descriptor_pb2.FileDescriptorProto.FromString(cri_descriptor(binary))
    # gogoproto's options are code generation hints for Go only: drop the import and the
    # extension fields (unknown here); protobuf's own options (map entries) stay
    del fd.dependency[:]
    fd.DiscardUnknownFields()
    out = tmp / "cri"
    out.mkdir(parents=True, exist_ok=True)
    fds = descriptor_pb2.FileDescriptorSet(file=[fd])
    (out / "cri.pb").write_bytes(fds.SerializeToString())
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_in={out / 'cri.pb'}",
                        f"--python_out={out}", f"--grpc_python_out={out}", "api.proto"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"grpc_tools.protoc: {r.stderr}")
    sys.path.insert(0, str(out))
    try:
        for mod in ("api_pb2", "api_pb2_grpc"):
            sys.modules.pop(mod, None)
        return importlib.import_module("api_pb2"), importlib.import_module("api_pb2_grpc")
    finally:
        sys.path.remove(str(out))


def busybox_image(path: Path, cmd: list[str]) -> Path:
    """A docker-archive tar of one layer: /bin/busybox and links for a few applets."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev", "www"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
        t.add("/bin/busybox", "bin/busybox")
        for a in APPLETS:
            ti = tarfile.TarInfo(f"bin/{a}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(ti)
    blob = layer.getvalue()
    diff = hashlib.sha256(blob).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff}"]},
                         "history": [{"created_by": "muslin tests: busybox-static"}]}).encode()
    csum = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{csum}.json", "RepoTags": [IMAGE], "Layers": [f"{diff}/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as t:
        for name, data in ((f"{diff}/layer.tar", blob), (f"{csum}.json", config), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return path


CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"""


class Containerd:
    """A private containerd (own socket, root, state), run in the network namespace `netns`
    (nsenter --net only: the mount namespace stays the machine's, so the pods' netns files
    under /run/netns are seen by the test). Stopped by PID."""

    def __init__(self, d: Path, bin_dir: Path, conf_dir: Path, netns: str) -> None:
        self.d = d
        self.sock = d / "containerd.sock"
        (d / "config.toml").write_text(CONFIG.format(d=d, image=IMAGE, bin_dir=bin_dir, conf_dir=conf_dir))
        self.log = open(d / "containerd.log", "w")
        self.proc = subprocess.Popen(["nsenter", f"--net={netns}", CONTAINERD, "--config", str(d / "config.toml")],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + 60
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"containerd did not start: {(d / 'containerd.log').read_text()[-3000:]}")
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["ctr", "--address", str(self.sock), "-n", "k8s.io", *args], capture_output=True,
                           text=True, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {r.stderr}")
        return r

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def shims(self) -> list[int]:
        """PIDs of the runc shims this containerd started (their cmdline names its address)."""
        out = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "containerd-shim" in cmd and str(self.sock) in cmd:
                out.append(int(p.name))
        return out

    def cleanup(self) -> None:
        """After stop: kill our shims left (none when pods were removed), unmount and remove the dirs."""
        for pid in self.shims():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            mnt = line.split()[4]
            if mnt.startswith(str(self.d)):
                subprocess.run(["umount", "-l", mnt], capture_output=True)
        shutil.rmtree(self.d, ignore_errors=True)

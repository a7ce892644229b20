"""What the cluster agent needs of the host it runs on: its overlay edge (routes, FDB and
neighbour entries, devices: dataplane/overlay.py), the Muslin service that keeps its local
bridge network, and IPv4 forwarding. `RealHost` is this host's kernel (the namespace the
agent runs in); `FakeHost` is all in memory (dataplane/fake_overlay.py and fake.py, a
MemoryStore), so that many agents run in one process (lab/sim.py) or in unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from muslin.store.memory import MemoryStore


class RealHost:
    def overlay(self) -> Any:
        from muslin.dataplane.overlay import Overlay
        return Overlay()

    def muslin(self, state_dir: Path) -> Any:
        from muslin.control.service import Muslin
        return Muslin(state_dir=state_dir)

    def forwarding(self) -> None:
        from muslin.dataplane.links import write_sysctl
        write_sysctl("net/ipv4/ip_forward", "1")


class _KeptStore(MemoryStore):
    """The fake host's local store outlives each Muslin service made on it."""

    def close(self) -> None:
        pass


class FakeHost:
    """A host in memory: its underlay (device, address, subnet, MTU), an overlay, a kernel
    for the local bridge network and its store."""

    def __init__(self, dev: str = "eth0", ip: str = "10.250.0.1", net: str = "10.250.0.0/16", mtu: int = 1500) -> None:
        from muslin.dataplane.fake import FakeKernel
        from muslin.dataplane.fake_overlay import FakeOverlay

        self.ov = FakeOverlay(dev, ip, net, mtu)
        self.kernel = FakeKernel(mtu=mtu)
        self.kernel.add_link("", dev, "veth", mtu=mtu)
        self.store = _KeptStore()
        self.forwarded = False

    def overlay(self) -> Any:
        return self.ov

    def muslin(self, state_dir: Path) -> Any:
        from muslin.control.service import Muslin
        return Muslin(self.store, state_dir, kernel=lambda: self.kernel)

    def forwarding(self) -> None:
        self.forwarded = True

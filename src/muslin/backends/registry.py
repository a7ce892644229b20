"""Backend by name: desired(cfg, local, peers) -> Desired and the network MTU."""

from __future__ import annotations

from muslin.backends import bgp, hostgw, vxlan
from muslin.backends.model import BACKENDS, ClusterConfig, Desired, HostRecord, Local
from muslin.model.errors import Invalid


def desired_state(cfg: ClusterConfig, local: Local, peers: list[HostRecord], bird_log: str = "") -> Desired:
    if cfg.backend == "vxlan":
        return vxlan.desired(cfg, local, peers)
    if cfg.backend == "host-gw":
        return hostgw.desired(cfg, local, peers)
    if cfg.backend == "bgp":
        return bgp.desired(cfg, local, peers, bird_log)
    raise Invalid(f"unknown backend {cfg.backend!r}: expected one of {', '.join(BACKENDS)}")

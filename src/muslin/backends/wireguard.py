"""wireguard backend: pod traffic between hosts goes encrypted through one WireGuard
interface per host (the kernel module where the host has it, else wireguard-go on a TUN
device; the same protocol, so the two interoperate).

A host publishes its public key and its endpoint (underlay address : listen port); its
private key stays in <state>/wireguard.key (companion "wireguard",
dataplane/wireguard.py). Per peer: a WireGuard peer (allowed-ips = its pod subnet,
persistent keepalive) and a route to its subnet through the interface. MTU = underlay - 80
(outer IPv6 40 + UDP 8 + WireGuard 32, so an IPv6 underlay fits too). Strict mode (default
on): an nft table of the agent's own drops traffic from the local pod subnet to the rest of
the cluster CIDR that would leave by any other interface, so a dead tunnel never falls
back to plaintext.

Options (`ClusterConfig.options`): port (51820), strict (true), keepalive (25 s),
rotate_every (seconds between automatic key rotations, 0 = only on `rotate-key`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from muslin.backends.base import Backend
from muslin.backends.model import ClusterConfig, Desired, HostRecord, Local
from muslin.model.errors import Invalid
from muslin.model.kernel import EgressGuard, Owned, RouteSpec, WgDev, WgPeer

OVERHEAD = 80


@dataclass(frozen=True)
class WgOptions:
    port: int = 51820
    strict: bool = True
    keepalive: int = 25
    rotate_every: int = 0

    def check(self) -> None:
        if not 1 <= self.port <= 65535:
            raise Invalid(f"backend wireguard: port {self.port} is out of range 1..65535")
        if not 0 <= self.keepalive <= 65535:
            raise Invalid(f"backend wireguard: keepalive {self.keepalive} is out of range 0..65535")
        if self.rotate_every and self.rotate_every < 10:
            raise Invalid(f"backend wireguard: rotate_every {self.rotate_every} must be 0 (never) or at least 10 s")


def guard_table(network: str) -> str:
    """The agent's own nft table (family inet) for strict mode."""
    return f"muslin-wg-{network}"


class WireGuard(Backend):
    name = "wireguard"
    overhead = OVERHEAD
    companions = ("wireguard",)
    Options = WgOptions

    def publish(self, cfg: ClusterConfig, me: HostRecord, facts: Mapping[str, str]) -> dict[str, str]:
        return {"public_key": facts.get("public_key", ""), "endpoint": f"{me.underlay}:{self.options(cfg).port}"}

    def owned(self, network: str, facts: Mapping[str, str]) -> Owned:
        return Owned(devices=(facts["ifname"],) if facts.get("ifname") else (), guards=(guard_table(network),))

    def desired(self, cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> Desired:
        o = self.options(cfg)
        me, dev, mtu = local.record, local.fact("ifname"), self.network_mtu(cfg, local)
        mine = local.fact("public_key") or me.get("public_key")  # the key file wins: it is what the device loads
        if not dev or not mine:
            raise Invalid(f"wireguard: host {me.hostname} has no interface name or key yet")
        routes, wg_peers, problems = set(), set(), []
        for p in sorted(peers, key=lambda r: r.hostname):
            if p.hostname == me.hostname:
                continue
            key, endpoint = p.get("public_key"), p.get("endpoint")
            if not (key and endpoint):
                problems.append(f"peer {p.hostname}: its record has no WireGuard key (not a wireguard host?); skipped")
                continue
            if key == mine or any(q.public_key == key for q in wg_peers):
                problems.append(f"peer {p.hostname}: its WireGuard key is already another host's; skipped")
                continue
            mine_v = [p.subnet_of(v) for v in (4, 6) if p.subnet_of(v) and me.subnet_of(v)]  # both have the family
            wg_peers.add(WgPeer(dev, key, endpoint, tuple(sorted(mine_v)), o.keepalive))  # as wg shows them
            routes |= {RouteSpec(s, "", dev) for s in mine_v}
        device = WgDev(dev, o.port, mtu, mine, userspace=local.fact("impl") != "kernel",
                       key_file=local.fact("key_file"), log=local.fact("log"))
        guards = (EgressGuard(guard_table(cfg.network), me.subnet, cfg.cidr, dev),) if o.strict else ()
        return Desired(routes=frozenset(routes), devices=(device,), peers=frozenset(wg_peers), guards=guards,
                       network_mtu=mtu, problems=tuple(problems))


BACKEND = WireGuard()

"""bgp backend: a real BIRD 2 per host (companion "bird", control/agent_bird.py) announces
the host's subnet over iBGP (full mesh, or to route reflectors) and installs the peers'
subnets with its kernel protocol. The backend renders BIRD's config (pure, here); the
companion loads it."""

from __future__ import annotations

from muslin.backends.base import Backend
from muslin.backends.model import ClusterConfig, Desired, HostRecord, Local

TIMERS = "connect delay time 1; connect retry time 2; hold time 9; keepalive time 3; error wait time 1, 5;"


def _proto(hostname: str) -> str:
    return "peer_" + "".join(c if c.isalnum() else "_" for c in hostname)


def bgp_peers(cfg: ClusterConfig, me: HostRecord, peers: list[HostRecord]) -> tuple[list[HostRecord], bool]:
    """The hosts this one keeps a session with, and whether it reflects routes to them."""
    others = sorted((p for p in peers if p.hostname != me.hostname), key=lambda p: p.hostname)
    if not cfg.route_reflectors:
        return others, False
    if me.hostname in cfg.route_reflectors:
        return others, True
    return [p for p in others if p.hostname in cfg.route_reflectors], False


def bird_config(cfg: ClusterConfig, local: Local, peers: list[HostRecord], log_path: str = "") -> str:
    me = local.record
    sessions, reflector = bgp_peers(cfg, me, peers)
    out = [f"# written by the muslin agent for network {cfg.network}; do not edit",
           f'log "{log_path}" {{ warning, error, fatal }};' if log_path else "",
           f"router id {me.underlay};",
           "protocol device { scan time 10; }",
           "protocol static muslin_subnet {",
           "  ipv4;",
           f"  route {me.subnet} blackhole;",
           "}",
           "protocol kernel muslin_kernel {",
           "  scan time 2;",
           "  ipv4 { import none; export where source = RTS_BGP; };",
           "}",
           "template bgp muslin_peer {",
           f"  local {me.underlay} as {cfg.asn};",
           "  direct;",
           f"  {TIMERS}",
           "  ipv4 {",
           "    import all;",
           "    gateway direct;",
           f"    export filter {{ if source = RTS_STATIC then {{ bgp_next_hop = {me.underlay}; accept; }}"
           + (" if source = RTS_BGP then accept;" if reflector else "") + " reject; };",
           "  };",
           "}"]
    for p in sessions:
        out.append(f"protocol bgp {_proto(p.hostname)} from muslin_peer {{ neighbor {p.underlay} as {cfg.asn};"
                   + (" rr client;" if reflector else "") + " }")
    return "\n".join(line for line in out if line) + "\n"


class Bgp(Backend):
    name = "bgp"
    companions = ("bird",)

    def desired(self, cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> Desired:
        conf = bird_config(cfg, local, peers, local.fact("bird_log"))
        return Desired(companions=(("bird", conf),), network_mtu=self.network_mtu(cfg, local))


BACKEND = Bgp()

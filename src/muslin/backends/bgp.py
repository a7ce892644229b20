"""bgp backend: a real BIRD 2 per host (companion "bird", control/agent_bird.py) announces
the host's subnet over iBGP (full mesh, or to route reflectors) and installs the peers'
subnets with its kernel protocol. The backend renders BIRD's config (pure, here); the
companion loads it."""

from __future__ import annotations

from muslin.backends.base import Backend
from muslin.backends.model import ClusterConfig, Desired, HostRecord, Local

TIMERS = "connect delay time 1; connect retry time 2; hold time 9; keepalive time 3; error wait time 1, 5;"


def _proto(hostname: str, family: str = "") -> str:
    return f"peer{family}_" + "".join(c if c.isalnum() else "_" for c in hostname)


def bgp_peers(cfg: ClusterConfig, me: HostRecord, peers: list[HostRecord]) -> tuple[list[HostRecord], bool]:
    """The hosts this one keeps a session with, and whether it reflects routes to them."""
    others = sorted((p for p in peers if p.hostname != me.hostname), key=lambda p: p.hostname)
    if not cfg.route_reflectors:
        return others, False
    if me.hostname in cfg.route_reflectors:
        return others, True
    return [p for p in others if p.hostname in cfg.route_reflectors], False


def bird_config(cfg: ClusterConfig, local: Local, peers: list[HostRecord], log_path: str = "") -> str:
    """BIRD's config: per address family of the host's subnets, a static blackhole route of
    its subnet (what it announces), a kernel protocol installing what BGP learned, and iBGP
    sessions with the peers over the underlay of that family (IPv6: the hosts' `underlay6`;
    the router id stays the IPv4 underlay address)."""
    me = local.record
    sessions, reflector = bgp_peers(cfg, me, peers)
    out = [f"# written by the muslin agent for network {cfg.network}; do not edit",
           f'log "{log_path}" {{ warning, error, fatal }};' if log_path else "",
           f"router id {me.underlay};",
           "protocol device { scan time 10; }"]
    for v, fam, sfx in ((4, "ipv4", ""), (6, "ipv6", "6")):
        subnet = me.subnet_of(v)
        local_ip = me.underlay if v == 4 else me.underlay6
        if not subnet or not local_ip:
            continue
        out += [f"protocol static muslin_subnet{sfx} {{",
                f"  {fam};",
                f"  route {subnet} blackhole;",
                "}",
                f"protocol kernel muslin_kernel{sfx} {{",
                "  scan time 2;",
                f"  {fam} {{ import none; export where source = RTS_BGP; }};",
                "}",
                f"template bgp muslin_peer{sfx} {{",
                f"  local {local_ip} as {cfg.asn};",
                "  direct;",
                f"  {TIMERS}",
                f"  {fam} {{",
                "    import all;",
                "    gateway direct;",
                f"    export filter {{ if source = RTS_STATIC then {{ bgp_next_hop = {local_ip}; accept; }}"
                + (" if source = RTS_BGP then accept;" if reflector else "") + " reject; };",
                "  };",
                "}"]
        for p in sessions:
            peer_ip = p.underlay if v == 4 else p.underlay6
            if peer_ip and p.subnet_of(v):
                out.append(f"protocol bgp {_proto(p.hostname, sfx)} from muslin_peer{sfx} {{ neighbor {peer_ip} "
                           f"as {cfg.asn};" + (" rr client;" if reflector else "") + " }")
    return "\n".join(line for line in out if line) + "\n"


def problems(cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> tuple[str, ...]:
    me = local.record
    out = []
    if me.subnet_of(6) and not me.underlay6:
        out.append(f"bgp: {me.hostname} has no IPv6 underlay address, so its IPv6 subnet is not announced (give its "
                   f"underlay device a global IPv6 address, or --underlay-ip6)")
    for p in bgp_peers(cfg, me, peers)[0]:
        if me.subnet_of(6) and p.subnet_of(6) and not p.underlay6:
            out.append(f"bgp: peer {p.hostname} has no IPv6 underlay address; no IPv6 session with it")
    return tuple(out)


class Bgp(Backend):
    name = "bgp"
    companions = ("bird",)

    def desired(self, cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> Desired:
        conf = bird_config(cfg, local, peers, local.fact("bird_log"))
        return Desired(companions=(("bird", conf),), network_mtu=self.network_mtu(cfg, local),
                       problems=problems(cfg, local, peers))


BACKEND = Bgp()

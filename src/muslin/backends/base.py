"""The one interface of a multi-host backend (in the spirit of flannel's pkg/backend).

A backend is one way of carrying pod traffic between hosts. It is pure: given the cluster
config, what the agent knows about its own host (`Local`) and the peers' records, it says
what the host should have (`Desired`: kernel objects from model/kernel.py, and the configs
of its companion processes). The agent (control/agent.py) does everything else the same
way for every backend: lease, publish, observe, diff, apply, supervise the companions.

What a backend declares:
- `name`: how a cluster config names it (registered in backends/registry.py);
- `overhead`: bytes per packet it takes off the underlay MTU;
- `companions`: host-side helpers the agent runs for it, by name ("bird": a BIRD 2 daemon,
  "wireguard": the WireGuard key and interface, wireguard-go where the kernel has no
  module). The agent maps each name to its implementation (control/agent.py COMPANIONS):
  it probes them before anything changes, asks them for host facts (a key file, an
  interface name: `Local.facts`), hands them their config, and lets them report;
- `Options`: a frozen dataclass of the backend's own settings (`ClusterConfig.options`);
- `publish()`: what a host puts in its record for its peers (`HostRecord.published`);
- `owned()`: the names of the devices and nft tables it may make on a host (the agent
  observes those, and removes them when the host leaves);
- `desired()`: the kernel state of one host;
- `per_peer` and `peer_desired()`: a backend whose desired state is its host's own objects
  (`desired(cfg, local, [])`) plus, for each peer, objects that depend on that peer alone
  says so; then an event for one peer costs the agent that peer's objects only
  (backends/peers.py). Others are diffed whole against what was last applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from muslin.model.errors import Invalid
from muslin.model.kernel import Owned

if TYPE_CHECKING:
    from muslin.backends.model import ClusterConfig, Desired, HostRecord, Local


class Backend:
    name: ClassVar[str] = ""
    overhead: ClassVar[int] = 0
    companions: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type | None] = None
    per_peer: ClassVar[bool] = False

    # -- settings ------------------------------------------------------------------------
    def options(self, cfg: ClusterConfig) -> Any:
        """The backend's settings from cfg.options (defaults filled in); Invalid, naming the
        key, when one is unknown or of the wrong type."""
        given = dict(cfg.options)
        if self.Options is None:
            if given:
                raise Invalid(f"backend {self.name} takes no options (got {', '.join(sorted(given))})")
            return None
        known = {f.name: f for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise Invalid(f"backend {self.name}: unknown option(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
        for k, v in given.items():
            want = type(known[k].default)
            if type(v) is not want:  # bool is not int here
                raise Invalid(f"backend {self.name}: option {k} must be a{'n' if want is int else ''} "
                              f"{want.__name__}, not {v!r}")
        opts = self.Options(**given)
        check = getattr(opts, "check", None)
        if check:
            check()
        return opts

    def check(self, cfg: ClusterConfig) -> None:
        self.options(cfg)

    # -- a host ----------------------------------------------------------------------------
    def wants_underlay6(self, cfg: ClusterConfig) -> bool:
        """Whether a host publishes its IPv6 underlay address (`HostRecord.underlay6`): when
        the network carries IPv6 (routes via it, BGP sessions over it)."""
        return cfg.has_ipv6

    def network_mtu(self, cfg: ClusterConfig, local: Local) -> int:
        """MTU of the host's side (bridge, veths, the backend's device)."""
        return cfg.mtu or local.underlay_mtu - self.overhead

    def publish(self, cfg: ClusterConfig, me: HostRecord, facts: Mapping[str, str]) -> dict[str, str]:
        """What this host's record carries for its peers, besides subnet and underlay."""
        return {}

    def owned(self, network: str, facts: Mapping[str, str]) -> Owned:
        return Owned()

    def desired(self, cfg: ClusterConfig, local: Local, peers: list[HostRecord]) -> Desired:
        raise NotImplementedError

    def peer_desired(self, cfg: ClusterConfig, local: Local, peer: HostRecord) -> Desired:
        """With `per_peer`: the objects (routes, neighbours, FDB entries, WireGuard peers) and
        problems of one peer; `desired()` is the host's own objects and the union of these."""
        raise NotImplementedError

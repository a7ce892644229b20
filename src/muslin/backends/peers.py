"""The agent's desired state kept per peer, so that an event for one peer costs that peer
alone: `update()` says what that peer's kernel objects should be and what they were, and
diff() of the two is the change (no other peer's objects are computed, read or touched).

For a backend whose objects are per peer (`Backend.per_peer`: vxlan, host-gw) the table
holds each peer's objects and how many peers want each object (two peers on one underlay
address share an FDB entry: it goes with the last of them). For the others (bgp: one BIRD
config for all peers; wireguard: a key may be claimed by one peer only) `update()`
computes the whole desired state and diffs it against what was last applied, still without
reading the kernel. `rebuild()` starts over from every peer (the periodic resync, which
then compares with the kernel). Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping

from muslin.backends.base import Backend
from muslin.backends.model import ClusterConfig, Desired, HostRecord, Local
from muslin.model.kernel import FdbSpec, NeighSpec, Observed, RouteSpec, WgPeer

Obj = RouteSpec | NeighSpec | FdbSpec | WgPeer


def _objects(d: Desired) -> tuple[Obj, ...]:
    return (*d.routes, *d.neighs, *d.fdb, *d.peers)


def _split(objs: Iterable[Obj]) -> dict[str, frozenset[Any]]:
    out: dict[type, set[Any]] = {RouteSpec: set(), NeighSpec: set(), FdbSpec: set(), WgPeer: set()}
    for o in objs:
        out[type(o)].add(o)
    return {"routes": frozenset(out[RouteSpec]), "neighs": frozenset(out[NeighSpec]),
            "fdb": frozenset(out[FdbSpec]), "peers": frozenset(out[WgPeer])}


def as_observed(d: Desired) -> Observed:
    """What the kernel holds after `d` was applied."""
    return Observed(d.routes, d.neighs, d.fdb, d.devices, d.peers, d.guards)


class PeerTable:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.base = Desired()  # the host's own objects (devices, guards, companions' configs)
        self.slices: dict[str, tuple[tuple[Obj, ...], tuple[str, ...]]] = {}  # host -> (objects, problems)
        self.wanted: Counter[Obj] = Counter()  # object -> how many peers want it
        self.troubled: dict[str, tuple[str, ...]] = {}  # hosts with problems -> their problems
        self.applied = Desired()  # whole backends: what was last applied
        # per-peer backends: peer_desired() (pure) remembered per host with what it was computed
        # from, so that a resync's rebuild computes again only the peers whose record changed
        self._memo: dict[str, tuple[HostRecord, Desired]] = {}
        self._memo_of: tuple[ClusterConfig, Local] | None = None

    def rebuild(self, cfg: ClusterConfig, local: Local, peers: Mapping[str, HostRecord]) -> Desired:
        """The whole desired state from every peer; the table starts over from it."""
        ordered = [peers[h] for h in sorted(peers) if h != local.record.hostname]
        if not self.backend.per_peer:
            self.applied = self.backend.desired(cfg, local, ordered)
            return self.applied
        self.base = self.backend.desired(cfg, local, [])
        self.slices, self.wanted, self.troubled = {}, Counter(), {}
        if self._memo_of != (cfg, local):
            self._memo, self._memo_of = {}, (cfg, local)
        memo: dict[str, tuple[HostRecord, Desired]] = {}
        for p in ordered:
            was = self._memo.get(p.hostname)
            d = was[1] if was is not None and was[0] == p else self.backend.peer_desired(cfg, local, p)
            memo[p.hostname] = (p, d)
            self._add(p.hostname, d)
        self._memo = memo
        return self.whole()

    def whole(self) -> Desired:
        """The whole desired state (per-peer backends: the host's objects and every slice)."""
        if not self.backend.per_peer:
            return self.applied
        parts = _split(self.wanted)
        b = self.base
        return Desired(b.routes | parts["routes"], b.neighs | parts["neighs"], b.fdb | parts["fdb"], b.devices,
                       b.peers | parts["peers"], b.guards, b.companions, b.network_mtu, self.problems)

    @property
    def problems(self) -> tuple[str, ...]:
        if not self.backend.per_peer:
            return self.applied.problems
        return self.base.problems + tuple(p for h in sorted(self.troubled) for p in self.troubled[h])

    def update(self, cfg: ClusterConfig, local: Local, peers: Mapping[str, HostRecord],
               hosts: Iterable[str]) -> tuple[Desired, Observed]:
        """For the changed `hosts` (their records as `peers` has them now, absent = gone):
        (what their objects should be, what they were). diff() of the two is the change;
        objects another peer still wants are kept."""
        if not self.backend.per_peer:
            before = self.applied
            ordered = [peers[h] for h in sorted(peers) if h != local.record.hostname]
            self.applied = self.backend.desired(cfg, local, ordered)
            return self.applied, as_observed(before)
        old: list[Obj] = []
        new: list[Obj] = []
        for h in set(hosts):
            gone = self.slices.pop(h, None)
            self.troubled.pop(h, None)
            if gone is not None:
                old += gone[0]
                for o in gone[0]:
                    self.wanted[o] -= 1
                    if self.wanted[o] <= 0:
                        del self.wanted[o]
            p = peers.get(h)
            if p is not None and h != local.record.hostname:
                d = self.backend.peer_desired(cfg, local, p)
                self._add(h, d)
                new += _objects(d)
        want = _split(new + [o for o in old if o in self.wanted])
        have = _split(old)
        return (Desired(want["routes"], want["neighs"], want["fdb"], peers=want["peers"]),
                Observed(have["routes"], have["neighs"], have["fdb"], peers=have["peers"]))

    def _add(self, host: str, d: Desired) -> None:
        objs = _objects(d)
        self.slices[host] = (objs, d.problems)
        self.wanted.update(objs)
        if d.problems:
            self.troubled[host] = d.problems

"""An in-memory `Overlay` (dataplane/overlay.py's interface: underlay, observe, apply,
close) for the agent without a kernel: unit tests, and the simulated cluster
(lab/sim.py), where many agents run in one process.

It keeps the kernel's rules that matter to the agent: one main-table route per
destination (a replace takes its place), a neighbour per device and address, FDB entries
appended (an existing one is kept), a device taking its routes, neighbours, FDB entries and
WireGuard peers along when deleted, and a route, neighbour or entry on a missing device
refused. `calls` counts the operations, `fail_on` makes named ones fail.
"""

from __future__ import annotations

import time
from collections import Counter

from muslin.model.errors import NotFound, Unavailable
from muslin.model.kernel import Changes, Device, EgressGuard, Observed, Owned, RouteSpec


class FakeOverlay:
    def __init__(self, dev: str = "eth0", ip: str = "10.250.0.1", net: str = "10.250.0.0/24", mtu: int = 1500) -> None:
        self.under = (dev, ip, net, mtu)
        self.under6 = ("", "")  # (IPv6 underlay address, its subnet)
        self.routes: dict[str, RouteSpec] = {}  # dst -> route (proto 77, main table)
        self.neighs: dict[tuple[str, str], str] = {}  # (dev, ip) -> mac
        self.fdb: set[tuple[str, str, str]] = set()  # (dev, mac, dst)
        self.devices: dict[str, Device] = {}
        self.peers: dict[tuple[str, str], object] = {}  # (dev, public key) -> WgPeer
        self.guards: dict[str, EgressGuard] = {}
        self.calls: Counter[str] = Counter()
        self.fail_on: set[str] = set()
        self.observes = 0
        # dst -> [(monotonic time, "add" | "del")]: when its route came and went (lab/sim.py)
        self.route_log: dict[str, list[tuple[float, str]]] = {}

    def close(self) -> None:
        pass

    def underlay6(self, dev: str, ip: str = "") -> tuple[str, str]:
        return self.under6 if not ip or ip == self.under6[0] else ("", "")

    def underlay(self, dev: str = "", ip: str = "") -> tuple[str, str, str, int]:
        d, a, n, m = self.under
        if (dev and dev != d) or (ip and ip != a):
            raise NotFound(f"underlay: no IPv4 address found for {'device ' + dev if dev else 'address ' + ip}")
        return self.under

    # -- observe -------------------------------------------------------------------------
    def observe(self, owned: Owned) -> Observed:
        from muslin.model.kernel import FdbSpec, NeighSpec

        self.observes += 1
        names = set(owned.devices)
        return Observed(frozenset(self.routes.values()),
                        frozenset(NeighSpec(d, ip, mac) for (d, ip), mac in self.neighs.items() if d in names),
                        frozenset(FdbSpec(*f) for f in self.fdb if f[0] in names),
                        tuple(self.devices[n] for n in owned.devices if n in self.devices),
                        frozenset(p for (d, _k), p in self.peers.items() if d in names),  # type: ignore[misc]
                        tuple(self.guards[t] for t in owned.guards if t in self.guards))

    # -- apply ---------------------------------------------------------------------------
    def _op(self, name: str) -> None:
        self.calls[name] += 1
        if name in self.fail_on:
            raise Unavailable(f"kernel refused a change (fake: {name} fails)")

    def _dev(self, name: str) -> None:
        if name not in self.devices and name != self.under[0]:
            raise NotFound(f"link {name} does not exist")

    def apply(self, ch: Changes) -> None:
        for g in ch.set_guards:
            self._op("set_guard")
            self.guards[g.table] = g
        for r in ch.del_routes:
            self._op("del_route")
            if self.routes.get(r.dst) == r:
                del self.routes[r.dst]
                self.route_log.setdefault(r.dst, []).append((time.monotonic(), "del"))
        for name in ch.delete_devices:
            self._op("delete_device")
            self._drop(name)
        for d in ch.create_devices + ch.update_devices:
            self._op("set_device")
            self.devices[d.name] = d
        for n in ch.del_neighs:
            self._op("del_neigh")
            if self.neighs.get((n.dev, n.ip)) == n.mac:
                del self.neighs[(n.dev, n.ip)]
        for f in ch.del_fdb:
            self._op("del_fdb")
            self.fdb.discard((f.dev, f.mac, f.dst))
        for f in ch.add_fdb:
            self._op("add_fdb")
            self._dev(f.dev)
            self.fdb.add((f.dev, f.mac, f.dst))
        for n in ch.add_neighs:
            self._op("add_neigh")
            self._dev(n.dev)
            self.neighs[(n.dev, n.ip)] = n.mac
        for p in ch.del_peers:
            self._op("del_peer")
            self.peers.pop((p.dev, p.public_key), None)
        for p in ch.set_peers:
            self._op("set_peer")
            self._dev(p.dev)
            self.peers[(p.dev, p.public_key)] = p
        for r in ch.add_routes:
            self._op("add_route")
            self._dev(r.dev)
            self.routes[r.dst] = r
            self.route_log.setdefault(r.dst, []).append((time.monotonic(), "add"))
        for t in ch.delete_guards:
            self._op("delete_guard")
            self.guards.pop(t, None)

    def _drop(self, name: str) -> None:
        self.devices.pop(name, None)
        self.routes = {k: r for k, r in self.routes.items() if r.dev != name}
        self.neighs = {k: v for k, v in self.neighs.items() if k[0] != name}
        self.fdb = {f for f in self.fdb if f[0] != name}
        self.peers = {k: v for k, v in self.peers.items() if k[0] != name}

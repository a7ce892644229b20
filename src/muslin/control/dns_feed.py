"""Feeds muslind's DNS name table from the stores: this host's networks and endpoints (the
state dir's store, changed by the CLI, muslin-cni, Docker, `agent attach` in any process)
and, for a cluster network, the endpoints the other hosts publish in the cluster store.

Each feed loads everything, then follows the store's watch from that revision and applies
each batch of changes to the table within WINDOW seconds; a lost or compacted watch loads
everything again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from muslin.dns.records import DnsEndpoint, NameTable, NetInfo, remote, service_entry
from muslin.model import keys
from muslin.model.errors import MuslinError, Unavailable
from muslin.model.types import Endpoint, Network
from muslin.store.base import Event, Store

log = logging.getLogger("muslin.dns")

WINDOW = 0.1  # seconds: changes that arrive together are applied together
Apply = Callable[[Callable[[NameTable], None]], object]


class Feed:
    """One store -> the table. `apply(fn)` runs fn(table) on the DNS server's loop."""

    name = "feed"

    def __init__(self, store: Store, apply: Apply, stop: threading.Event) -> None:
        self.store, self.apply, self.stop = store, apply, stop
        self.thread = threading.Thread(target=self._run, name=f"dns-{self.name}", daemon=True)
        self.loaded = threading.Event()

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        if self.thread.is_alive():
            self.thread.join(5)

    def _run(self) -> None:
        delay = 0.2
        while not self.stop.is_set():
            try:
                nxt = self.load()
                self.loaded.set()
                delay = 0.2
                self.follow(nxt)
            except Unavailable as e:
                log.debug("DNS %s: %s", self.name, e)
            except MuslinError as e:
                log.warning("DNS %s: %s", self.name, e)
            except Exception:  # noqa: BLE001 - keep serving what the table has
                log.exception("DNS %s failed; loading again", self.name)
            if self.stop.wait(delay):
                return
            delay = min(5.0, delay * 2)

    def follow(self, nxt: int) -> None:
        while not self.stop.is_set():
            batch: list[Event] = []
            first = 0.0
            for ev in self.store.watch(self.prefix, nxt, timeout=WINDOW):
                nxt = ev.revision + 1
                if self.wanted(ev):
                    batch.append(ev)
                    first = first or time.monotonic()
                if self.stop.is_set() or (first and time.monotonic() - first >= WINDOW):
                    break
            if batch:
                self.apply_events(batch)

    prefix = ""

    def wanted(self, ev: Event) -> bool:
        return True

    def load(self) -> int:
        raise NotImplementedError

    def apply_events(self, events: list[Event]) -> None:
        raise NotImplementedError


class LocalFeed(Feed):
    """This host's networks and endpoints (keys networks/ and endpoints/)."""

    name = "local"

    def __init__(self, store: Store, apply: Apply, stop: threading.Event) -> None:
        super().__init__(store, apply, stop)
        self.nets: dict[str, NetInfo] = {}

    def wanted(self, ev: Event) -> bool:
        return ev.key.startswith((keys.NETWORKS, keys.ENDPOINTS, keys.SERVICES))

    def load(self) -> int:
        rev = self.store.revision()
        self.nets = {kv.key: NetInfo.of(Network.from_dict(kv.value)) for kv in self.store.list(keys.NETWORKS)}
        eps = {kv.key: DnsEndpoint.of(Endpoint.from_dict(kv.value)) for kv in self.store.list(keys.ENDPOINTS)}
        svcs = {kv.key: e for kv in self.store.list(keys.SERVICES) if (e := service_entry(kv.value)) is not None}
        nets = list(self.nets.values())

        def go(t: NameTable) -> None:
            t.set_networks(nets)
            t.replace_all(eps, keys.ENDPOINTS)
            t.replace_all(svcs, keys.SERVICES)
        self.apply(go).result(10)  # type: ignore[attr-defined]
        log.info("DNS: %d networks, %d endpoints on this host", len(nets), len(eps))
        return rev + 1

    def apply_events(self, events: list[Event]) -> None:
        nets_changed = False
        changes: list[tuple[str, DnsEndpoint | None]] = []
        for ev in events:
            if ev.key.startswith(keys.NETWORKS):
                nets_changed = True
                if ev.type == "delete" or ev.value is None:
                    self.nets.pop(ev.key, None)
                else:
                    self.nets[ev.key] = NetInfo.of(Network.from_dict(ev.value))
            elif ev.key.startswith(keys.SERVICES):
                changes.append((ev.key, None if ev.type == "delete" or ev.value is None
                                else service_entry(ev.value)))
            else:
                changes.append((ev.key, None if ev.type == "delete" or ev.value is None
                                else DnsEndpoint.of(Endpoint.from_dict(ev.value))))
        nets = list(self.nets.values())

        def go(t: NameTable) -> None:
            if nets_changed:
                t.set_networks(nets)
            for key, ep in changes:
                if ep is None:
                    t.remove(key)
                else:
                    t.put(key, ep)
        self.apply(go)


class ClusterFeed(Feed):
    """The endpoints other hosts publish for one cluster network (cluster/<net>/endpoints/)."""

    name = "cluster"

    def __init__(self, store: Store, apply: Apply, stop: threading.Event, network: str, hostname: str) -> None:
        super().__init__(store, apply, stop)
        self.network, self.hostname = network, hostname
        self.prefix = keys.cluster_endpoints(network)

    def _entry(self, key: str, value: object) -> DnsEndpoint | None:
        host = key[len(self.prefix):].split("/", 1)[0]
        if host == self.hostname or not isinstance(value, dict):
            return None  # our own come from the local store, sooner
        return remote(self.network, host, value)

    def load(self) -> int:
        rev = self.store.revision()
        eps = {}
        for kv in self.store.list(self.prefix):
            ep = self._entry(kv.key, kv.value)
            if ep is not None:
                eps[kv.key] = ep
        self.apply(lambda t: t.replace_all(eps, self.prefix)).result(10)  # type: ignore[attr-defined]
        log.info("DNS: %d endpoints of other hosts on %s", len(eps), self.network)
        return rev + 1

    def apply_events(self, events: list[Event]) -> None:
        changes = [(ev.key, None if ev.type == "delete" else self._entry(ev.key, ev.value)) for ev in events]

        def go(t: NameTable) -> None:
            for key, ep in changes:
                if ep is None:
                    t.remove(key)
                else:
                    t.put(key, ep)
        self.apply(go)


def serving(state_dir: str) -> bool:
    """Does a muslind serve DNS for this state dir (its marker names a live process)?"""
    import os

    try:
        pid = int(open(os.path.join(state_dir, "dns.pid")).read().split()[0])
        os.kill(pid, 0)
        return True
    except (OSError, ValueError, IndexError):
        return False

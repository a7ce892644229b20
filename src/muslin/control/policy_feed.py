"""Network policy across hosts: muslind of a cluster host follows what the cluster store
holds for policy and keeps a copy in its own store, then syncs its firewall.

`ObjectsFeed` (the pattern of control/dns_feed.py: load everything, then follow the watch
from that revision, changes that arrive together applied together, a lost watch loads
again) copies the cluster store's `policy/` (policies and namespaces' labels) under
`mirror/` (model/keys.py) in this host's store, in one transaction per batch (stale copies
deleted at each load), and the firewall is synced from this host's store
(control/firewall.py), so the CLI and muslin-cni of the host compile the same one. The
other hosts' endpoints (labels, namespace, addresses and named ports, written by their
muslind's EndpointPublisher) come from the one copy services use too: `remote-endpoints/`,
kept by control/service_members.py, which syncs the policy when they change.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from muslin.control.dns_feed import Feed
from muslin.model import keys
from muslin.model.errors import Conflict, MuslinError
from muslin.store.base import Delete, Event, Put, Store

log = logging.getLogger("muslin.policy")

CHUNK = 100


class _MirrorFeed(Feed):
    def __init__(self, cluster: Store, muslin: Any, stop: threading.Event) -> None:
        super().__init__(cluster, lambda fn: None, stop)
        self.m = muslin
        self.thread.name = f"policy-{self.name}"

    def keep(self, key: str) -> bool:
        return True

    def load(self) -> int:
        rev = self.store.revision()
        want = {keys.mirror(kv.key): kv.value for kv in self.store.list(self.prefix) if self.keep(kv.key)}
        have = {kv.key: kv.value for kv in self.m.store.list(keys.mirror(self.prefix))}
        ops: list[Any] = [Put(k, v) for k, v in want.items() if have.get(k) != v]
        ops += [Delete(k) for k in have if k not in want]
        self._write(ops)
        log.info("policy: %d %s from the cluster store", len(want), self.name)
        self._sync(bool(ops) or not self.loaded.is_set())
        return rev + 1

    def apply_events(self, events: list[Event]) -> None:
        last: dict[str, Any] = {}
        for ev in events:
            if self.keep(ev.key):
                last[ev.key] = None if ev.type == "delete" or ev.value is None else ev.value
        ops: list[Any] = [Delete(keys.mirror(k)) if v is None else Put(keys.mirror(k), v) for k, v in last.items()]
        if ops:
            self._write(ops)
            self._sync(True)

    def _write(self, ops: list[Any]) -> None:
        for i in range(0, len(ops), CHUNK):
            for _ in range(5):
                try:
                    self.m.store.txn([], ops[i:i + CHUNK])
                    break
                except Conflict:
                    continue

    def _sync(self, changed: bool) -> None:
        from muslin.control import policy

        if not changed:
            return
        try:
            policy.enforce(self.m)
        except MuslinError as e:
            log.warning("policy: firewall sync: %s", e)


class ObjectsFeed(_MirrorFeed):
    name = "objects"
    prefix = keys.POLICY

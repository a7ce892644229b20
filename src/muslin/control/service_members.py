"""Other hosts' endpoints of a cluster network as service backends (run by muslind's
cluster service): the records they publish (`cluster/<net>/endpoints/<host>/`, see
control/cluster_names.py) are mirrored into this host's store (`remote-endpoints/<net>/
<host>/`, which control/services.py selects from as from local endpoints, and network
policy puts in its sets, control/policy.py), and the services they match and the policy
follow at once (one batch per change, as for a local endpoint)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from muslin.control import services
from muslin.model import keys
from muslin.model.errors import MuslinError, Unavailable
from muslin.store.base import Delete, Put, Store

if TYPE_CHECKING:
    from muslin.control.service import Muslin

log = logging.getLogger("muslin.services")

CHUNK = 100  # etcd takes at most 128 operations in one transaction


class RemoteMembers:
    def __init__(self, cluster: Store, m: Muslin, network: str, hostname: str, stop: threading.Event) -> None:
        self.cluster, self.m, self.network, self.hostname, self.stop = cluster, m, network, hostname, stop
        self.prefix = keys.cluster_endpoints(network)
        self.thread = threading.Thread(target=self._run, name="service-members", daemon=True)
        self.loaded = False

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        if self.thread.is_alive():
            self.thread.join(5)

    def _local_key(self, key: str) -> str | None:
        """cluster/<net>/endpoints/<host>/<id> -> remote-endpoints/<net>/<host>/<id> (None: ours)."""
        host, _, rest = key[len(self.prefix):].partition("/")
        if not host or not rest or host == self.hostname:
            return None
        return keys.remote_endpoints(self.network, host) + rest

    def _member(self, local_key: str, value: Any) -> services.Member | None:
        if not isinstance(value, dict):
            return None
        host = local_key[len(keys.remote_endpoints(self.network)):].split("/", 1)[0]
        return services.Member.remote(self.network, host, value)

    def _run(self) -> None:
        delay = 0.2
        while not self.stop.is_set():
            try:
                nxt = self.load()
                delay = 0.2
                self.follow(nxt)
            except Unavailable as e:
                log.debug("remote service members of %s: %s", self.network, e)
            except MuslinError as e:
                log.warning("remote service members of %s: %s", self.network, e)
            except Exception:  # noqa: BLE001 - keep going: the next load makes it right
                log.exception("remote service members of %s failed; loading again", self.network)
            if self.stop.wait(delay):
                return
            delay = min(5.0, delay * 2)

    def load(self) -> int:
        """The local copy made exactly the cluster's, then every service synced once."""
        rev = self.cluster.revision()
        want: dict[str, Any] = {}
        for kv in self.cluster.list(self.prefix):
            lk = self._local_key(kv.key)
            if lk is not None:
                want[lk] = kv.value
        have = {kv.key: kv.value for kv in self.m.store.list(keys.remote_endpoints(self.network))}
        ops: list[Any] = [Put(k, v) for k, v in want.items() if have.get(k) != v]
        ops += [Delete(k) for k in have if k not in want]
        # the second copy an earlier Muslin kept for policy (mirror/cluster/<net>/endpoints/)
        ops += [Delete(k) for k in self.m.store.keys(keys.mirror(self.prefix))]
        for i in range(0, len(ops), CHUNK):
            self.m.store.txn([], ops[i:i + CHUNK])
        if self.m.store.keys(keys.SERVICES, limit=1):
            with self.m.kernel() as k:
                services.resync(self.m, k, base=False)
        self._policy(bool(ops) or not self.loaded)
        self.loaded = True
        return rev + 1

    def _policy(self, changed: bool) -> None:
        """The firewall synced when the other hosts' endpoints changed while a policy exists."""
        from muslin.control import policy

        if not changed or not policy.in_use(self.m.store):
            return
        try:
            policy.enforce(self.m)
        except MuslinError as e:
            log.warning("policy: firewall sync: %s", e)

    def follow(self, nxt: int) -> None:
        """One long-lived watch from `nxt` (a gap raises Compacted: load again)."""
        w = self.cluster.open_watch(self.prefix, nxt)
        try:
            while not self.stop.is_set():
                for ev in w.get(timeout=1.0):
                    self.apply(ev.key, None if ev.type == "delete" else ev.value)
                    if self.stop.is_set():
                        return
        finally:
            w.close()

    def apply(self, key: str, value: Any) -> None:
        lk = self._local_key(key)
        if lk is None:
            return
        kv = self.m.store.get(lk)
        old = self._member(lk, kv.value) if kv is not None else None
        new = self._member(lk, value) if value is not None else None
        if value is None:
            self.m.store.delete(lk)
        else:
            self.m.store.put(lk, value)
        if old != new and services.present(self.m, self.network):
            with self.m.kernel() as k:
                services.members_changed(self.m, k, [(old, new)])
        if (kv.value if kv is not None else None) != value:
            self._policy(True)

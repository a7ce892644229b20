"""A host's endpoints on a cluster network, published to the cluster store for the other
hosts (their DNS, and later services and policy, read them).

Key `cluster/<net>/endpoints/<hostname>/<endpoint id>` (model/keys.py), value
`record_of(endpoint)`, written by the host that owns the endpoint under its *subnet lease*:
removed when the endpoint detaches, and with the lease when the host leaves or its lease
expires. The publisher follows the host's own store (attach and detach are done by other
processes: the CLI, muslin-cni, `agent attach`) and the agent's lease (a new lease means
the old keys went with the old one: all are written again).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from muslin.model import keys
from muslin.model.errors import MuslinError, Unavailable
from muslin.model.types import Endpoint
from muslin.store.base import Delete, Put, Store

log = logging.getLogger("muslin.cluster")

POLL = 0.2  # seconds between looks at the local store's revision


def record_of(ep: Endpoint) -> dict[str, Any]:
    return {"endpoint_id": ep.endpoint_id, "sandbox": ep.netns or ep.container_id or ep.endpoint_id,
            "name": ep.name, "aliases": list(ep.aliases), "labels": dict(ep.labels), "namespace": ep.namespace,
            "addresses": [str(a) for a in ep.addresses], "exposed": [p.to_dict() for p in ep.exposed]}


class EndpointPublisher:
    def __init__(self, cluster: Store, local: Store, network: str, hostname: str,
                 lease: Callable[[], int]) -> None:
        self.cluster, self.local = cluster, local
        self.network, self.hostname = network, hostname
        self.lease = lease  # the agent's current subnet lease (0 while it has none)
        self.published: dict[str, Any] = {}
        self._seen: tuple[int, int] | None = None
        self.thread = threading.Thread(target=self.run, name="cluster-names", daemon=True)
        self.stop_event = threading.Event()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(5)

    def run(self) -> None:
        while not self.stop_event.wait(POLL):
            try:
                self.sync()
            except Unavailable as e:
                log.debug("publishing endpoints: %s", e)
            except MuslinError as e:
                log.warning("publishing endpoints of %s: %s", self.network, e)

    def want(self) -> dict[str, Any]:
        out = {}
        for kv in self.local.list(keys.endpoints(self.network)):
            ep = Endpoint.from_dict(kv.value)
            out[keys.cluster_endpoint(self.network, self.hostname, ep.endpoint_id)] = record_of(ep)
        return out

    def sync(self) -> bool:
        """Publish what changed since the last call; True when something was written."""
        lease = self.lease()
        if not lease:
            return False
        rev = self.local.revision()
        if self._seen == (lease, rev):
            return False
        if self._seen is None or self._seen[0] != lease:  # first run or a new lease: read what is there
            have = {kv.key: (kv.value, kv.lease) for kv in
                    self.cluster.list(keys.cluster_endpoints(self.network, self.hostname))}
            self.published = {k: v for k, (v, kl) in have.items() if kl == lease}
            stale = [k for k in have if k not in self.published]
        else:
            stale = []
        want = self.want()
        ops: list = [Put(k, v, lease=lease) for k, v in want.items() if self.published.get(k) != v]
        ops += [Delete(k) for k in list(self.published) + stale if k not in want]
        for i in range(0, len(ops), 100):  # etcd limits the ops of one txn (128)
            self.cluster.txn([], ops[i:i + 100])
        self.published = want
        self._seen = (lease, rev)
        if ops:
            log.info("published %d endpoint change(s) of %s", len(ops), self.network)
        return bool(ops)

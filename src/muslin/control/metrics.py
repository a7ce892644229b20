"""muslind's Prometheus metrics (prometheus_client), served at /metrics of --metrics-address.

Two kinds, all named muslin_* (docs/metrics.md has the table):
- counted as the work happens, from events (muslin/events.py): requests and latency per CNI
  verb and Docker method, errors by kind, plan phases (the same measurements as the
  phase timings of control/timings.py, not timed again), nft transactions, reconciles and
  drift repairs, store calls, watch lag; DNS queries and policy drops once their parts emit;
- read from the state when scraped (`Sources`): endpoints per network, IPAM pool usage,
  the DEL reaper's queue, peers and their health.

A private registry per `Metrics`: tests make their own; muslind makes one.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from muslin import events
from muslin.control.timings import NFT_PHASE

log = logging.getLogger("muslin.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
# seconds: a warm CNI ADD is a few ms, a first one with a new network ~100 ms, etcd calls ~1 ms
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.cni_requests = Counter("muslin_cni_requests", "CNI requests muslind served, by plugin (cni, ipam), "
                                    "verb and result (ok, error)", ["plugin", "verb", "result"], registry=r)
        self.cni_seconds = Histogram("muslin_cni_request_duration_seconds", "time muslind took to answer a CNI "
                                     "request, by plugin and verb", ["plugin", "verb"], buckets=FAST, registry=r)
        self.docker_requests = Counter("muslin_docker_requests", "Docker plugin calls, by method and result",
                                       ["method", "result"], registry=r)
        self.docker_seconds = Histogram("muslin_docker_request_duration_seconds", "time to answer a Docker "
                                        "plugin call, by method", ["method"], buckets=FAST, registry=r)
        self.errors = Counter("muslin_errors", "requests that failed, by source (cni, docker) and error kind",
                              ["source", "kind"], registry=r)
        self.phase_seconds = Histogram("muslin_phase_duration_seconds", "time of each plan step and use-case "
                                       "total (the phase timings)", ["phase"], buckets=FAST, registry=r)
        self.nft_seconds = Histogram("muslin_nft_transaction_duration_seconds", "time of one firewall sync "
                                     "(observe the table, one nft batch)", buckets=FAST, registry=r)
        self.nft_failures = Counter("muslin_nft_transaction_failures", "firewall syncs that failed", registry=r)
        self.reconcile_seconds = Histogram("muslin_reconcile_duration_seconds", "time of one reconcile, by loop "
                                           "(cluster: routes/FDB/neighbours; orphans: Docker and DOCKER-USER)",
                                           ["loop"], buckets=SLOW, registry=r)
        self.reconcile_changes = Counter("muslin_reconcile_changes", "kernel changes reconciles applied, by loop",
                                         ["loop"], registry=r)
        self.drift_repairs = Counter("muslin_drift_repairs", "periodic resyncs that found the kernel changed "
                                     "behind muslind's back and put it back, by loop", ["loop"], registry=r)
        self.store_seconds = Histogram("muslin_store_request_duration_seconds", "time of a store call, by "
                                       "backend (sqlite, etcd, memory) and operation", ["backend", "op"],
                                       buckets=FAST, registry=r)
        self.store_failures = Counter("muslin_store_request_failures", "store calls that raised (Conflict "
                                      "included), by backend and operation", ["backend", "op"], registry=r)
        self.watch_lag = Histogram("muslin_watch_lag_seconds", "from the store's watch delivering a host event "
                                   "to the kernel reconciled with it, by cluster network", ["network"],
                                   buckets=SLOW, registry=r)
        # DNS (dns/server.py emits); policy drops: a hook for network policy (muslin/events.py)
        self.dns_queries = Counter("muslin_dns_queries", "DNS queries answered, by type, rcode and how "
                                   "(local: from Muslin's names; forwarded: by an upstream resolver)",
                                   ["qtype", "rcode", "answered"], registry=r)
        self.dns_seconds = Histogram("muslin_dns_query_duration_seconds", "time to answer a DNS query",
                                     buckets=FAST, registry=r)
        self.policy_drops = Counter("muslin_policy_drops", "packets dropped by network policy, by network",
                                    ["network"], registry=r)
        self.sources = Sources()
        r.register(self.sources)
        self._unlisten: Callable[[], None] | None = None

    # -- events --------------------------------------------------------------------------
    def listen(self) -> None:
        if self._unlisten is None:
            self._unlisten = events.listen(self.on_event)

    def close(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def on_event(self, name: str, f: dict[str, Any]) -> None:
        handler = getattr(self, "_on_" + name, None)
        if handler is not None:
            handler(**f)

    def _on_cni_request(self, plugin: str, verb: str, rc: int, seconds: float) -> None:
        verb = verb or "-"
        self.cni_requests.labels(plugin, verb, "ok" if rc == 0 else "error").inc()
        self.cni_seconds.labels(plugin, verb).observe(seconds)

    def _on_docker_request(self, method: str, seconds: float, error: str) -> None:
        self.docker_requests.labels(method, "error" if error else "ok").inc()
        self.docker_seconds.labels(method).observe(seconds)

    def _on_error(self, source: str, kind: str) -> None:
        self.errors.labels(source, kind).inc()

    def _on_phase(self, phase: str, seconds: float, ok: bool) -> None:
        self.phase_seconds.labels(phase).observe(seconds)
        if phase == NFT_PHASE:
            self.nft_seconds.observe(seconds)
            if not ok:
                self.nft_failures.inc()

    def _on_reconcile(self, loop: str, seconds: float, changes: int = 0, drift: bool = False) -> None:
        self.reconcile_seconds.labels(loop).observe(seconds)
        if changes:
            self.reconcile_changes.labels(loop).inc(changes)
        if drift:
            self.drift_repairs.labels(loop).inc()

    def _on_store(self, backend: str, op: str, seconds: float, ok: bool) -> None:
        self.store_seconds.labels(backend, op).observe(seconds)
        if not ok:
            self.store_failures.labels(backend, op).inc()

    def _on_watch_lag(self, network: str, seconds: float) -> None:
        self.watch_lag.labels(network).observe(seconds)

    def _on_dns_query(self, qtype: str, rcode: str, seconds: float, answered: str = "local") -> None:
        self.dns_queries.labels(qtype, rcode, answered).inc()
        self.dns_seconds.observe(seconds)

    def _on_policy_drop(self, network: str, n: int = 1) -> None:
        self.policy_drops.labels(network).inc(n)

    # -- exposition ----------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)


class Sources:
    """Gauges read from the state at each scrape: each source is a function returning
    (name, help, labels, [(label values, value), ...]) tuples. A failing source is logged
    and left out of that scrape (never a failed scrape)."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[tuple[str, str, list[str], list[tuple[list[str], float]]]]]] = []

    def add(self, fn: Callable[[], Iterable[Any]]) -> None:
        self.sources.append(fn)

    def describe(self) -> list[Any]:
        return []  # no fixed set: the registry must not call collect() at registration

    def collect(self) -> Iterable[Any]:
        for fn in list(self.sources):
            try:
                rows = list(fn())
            except Exception as e:  # noqa: BLE001 - one source down must not fail the scrape
                log.warning("metrics source %s: %s", getattr(fn, "__name__", fn), " ".join(str(e).split()))
                continue
            for name, help_, labels, samples in rows:
                g = GaugeMetricFamily(name, help_, labels=labels)
                for values, v in samples:
                    g.add_metric(values, v)
                yield g


# -- scrape-time sources -------------------------------------------------------------------

def pool_usage(m: Any, net: Any) -> list[tuple[str, int, int]]:
    """(subnet, addresses allocated, addresses allocatable) of each range of a network."""
    from muslin.ipam.ranges import normalize_range, range_contains
    from muslin.model import keys

    out = []
    for rs in net.range_sets:
        for r in rs:
            r = normalize_range(r)
            size = int(r.range_end) - int(r.range_start) + 1
            if r.gateway is not None and range_contains(r, r.gateway):
                size -= 1
            if r.subnet.version == 4:
                size -= sum(1 for a in (r.subnet.network_address, r.subnet.broadcast_address) if range_contains(r, a))
            prefix = keys.ipam_ips(r.subnet)
            import ipaddress

            used = sum(1 for k in m.store.keys(prefix)
                       if range_contains(r, ipaddress.ip_address(k[len(prefix):])) and
                       ipaddress.ip_address(k[len(prefix):]) != r.gateway)
            out.append((str(r.subnet), used, size))
    return out


def local_source(muslin: Callable[[], Any]) -> Callable[[], list[Any]]:
    """Networks, endpoints per network, IPAM pools and the DEL reaper's queue of this state dir."""

    def local() -> list[Any]:
        from muslin.model import keys

        m = muslin()
        nets = m.list_networks()
        eps: dict[str, int] = {n.name: 0 for n in nets}
        for k in m.store.keys(keys.ENDPOINTS):
            net = k[len(keys.ENDPOINTS):].split("/", 1)[0]
            eps[net] = eps.get(net, 0) + 1
        used, size = [], []
        for n in nets:
            for subnet, u, s in pool_usage(m, n):
                used.append(([n.name, subnet], float(u)))
                size.append(([n.name, subnet], float(s)))
        held = len(m.store.keys(keys.ipam_owner(keys.REAP_OWNERS)))
        return [
            ("muslin_networks", "networks in the store, by driver", ["driver"],
             [([d], float(sum(1 for n in nets if n.driver == d))) for d in sorted({n.driver for n in nets})]),
            ("muslin_endpoints", "endpoints per network", ["network"], [([k], float(v)) for k, v in sorted(eps.items())]),
            ("muslin_ipam_addresses_allocated", "addresses allocated, per network and subnet",
             ["network", "subnet"], used),
            ("muslin_ipam_addresses_allocatable", "addresses the range can hand out (gateway, network and "
             "broadcast left out), per network and subnet", ["network", "subnet"], size),
            ("muslin_reap_queue_owners", "detached endpoints whose addresses wait for their retired link to be "
             "deleted (the DEL reaper's queue)", [], [([], float(held))]),
        ]

    return local


def cluster_source(agent: Any) -> Callable[[], list[Any]]:
    """Peers of this host's cluster network and whether each one's agent is alive."""

    def cluster() -> list[Any]:
        from muslin.control.agent import list_alive

        peers = sorted(h for h in agent.peers if h != agent.hostname)
        try:
            alive = set(list_alive(agent.store, agent.network))
            store_up = 1.0
        except Exception:  # noqa: BLE001 - the store away: peers unknown, say so
            alive, store_up = set(), 0.0
        net = agent.network
        return [
            ("muslin_peers", "hosts this host routes to, per cluster network", ["network"], [([net], float(len(peers)))]),
            ("muslin_peer_up", "1 when the peer's agent holds its liveness key, else 0", ["network", "peer"],
             [([net, p], 1.0 if p in alive else 0.0) for p in peers]),
            ("muslin_cluster_store_up", "1 when the cluster store answered this scrape", ["network"],
             [([net], store_up)]),
            ("muslin_reconcile_problems", "problems the cluster agent reports (unreachable peers, failed "
             "reconciles)", ["network"], [([net], float(len(agent.problems)))]),
        ]

    return cluster

"""The multi-host agent: one cluster network on this host.

It leases a subnet of the cluster CIDR (key cluster/<net>/hosts/<hostname> and the
subnet key under the *subnet lease*: long, `subnet_ttl`, renewed), makes the local side
(an ordinary Muslin bridge network on that subnet), watches the other hosts' records and
reconciles the kernel: desired = backend(config, self, peers), observed from the kernel,
apply only the difference. A periodic resync repairs drift. Liveness is a separate key,
cluster/<net>/alive/<hostname>, under a short lease (`lease_ttl`): it tells status that
the agent runs and is never used for routing, so a crashed or restarting agent takes no
routes away. Stopping never tears anything down (traffic keeps flowing across restarts);
leaving (SIGTERM with --leave, SIGUSR1, or `leave`) gives everything back, and peers drop
a host whose subnet lease truly expires.

What the agent knows of its peers is a local copy of the hosts' records kept current by
one long-lived watch (store/cache.py): listed once at start, then only the events, and
listed again when the watch reports a gap, or rarely (`relist`, minutes, jittered) as a
check. An event for one peer changes that peer's kernel objects only (backends/peers.py:
computed for that peer, diffed against what it had, no kernel read); the full desired-vs-
observed diff, which reads the kernel, runs at the periodic resync (`resync`, longer beyond
SCALE_HOSTS peers: resync_period), which repairs drift from the local copy without asking
the store.

The agent treats every backend alike (backends/base.py): it probes the backend's
companions before anything changes, gathers their host facts, publishes what the backend
says, reconciles desired vs observed, hands the companions their configs, and asks them
about once a second whether something needs a reconcile (a dead wireguard-go or BIRD, a
rotated key).

Entry: muslind (`--cluster-store`, `--cluster-network`); `muslin cluster ...` (control/agent_cli.py),
including `rotate-key`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import random
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from muslin import events
from muslin.backends.base import Backend
from muslin.backends.model import NAME_MAX, ClusterConfig, Desired, HostRecord, Local, diff, owned
from muslin.backends.peers import PeerTable
from muslin.backends.registry import BACKENDS, get_backend
from muslin.model import keys, names
from muslin.model.errors import Conflict, Exhausted, Invalid, MuslinError, NotFound, Unavailable
from muslin.store.base import Compare, Delete, Put, Store
from muslin.store.cache import Change, WatchCache

DEFAULT_RESYNC = 10.0  # seconds between kernel resyncs (desired from the local copy vs the kernel)
DEFAULT_RELIST = 600.0  # seconds (jittered 0.5x .. 1.5x) between lists of the hosts: a check, not a need
# Beyond this many hosts the resync's and the check list's periods grow with the hosts: a
# resync diffs every peer, a check list fetches every record, so at a fixed period an
# agent's idle CPU would grow with N and the cluster's list bytes with N^2.
SCALE_HOSTS = 100
ALIVE_MARGIN = 15.0  # seconds a liveness renewal may be late before the lease expires (at least)
SETTLE = 0.05  # seconds: events this close together are reconciled as one batch
TICK = 1.0  # seconds: the longest the loop sleeps (a stop is seen within it; companions are asked)
WATCH_GRACE = 2.0  # seconds a watch may be down before the store counts as unavailable

# The host side of the backends' companions (backends/base.py), by name: module, class.
# Each has probe() (static: Unsupported before anything changes), facts(create), tick(),
# ensure(config), status() and stop().
COMPANIONS = {"bird": ("muslin.control.agent_bird", "Bird"),
              "wireguard": ("muslin.dataplane.wireguard", "WireGuardHost")}


def resync_period(base: float, hosts: int) -> float:
    """Seconds between resyncs: `base`, times hosts / SCALE_HOSTS beyond SCALE_HOSTS hosts
    (a full diff costs about the same per peer, so its CPU per second stays bounded)."""
    return base * max(1.0, hosts / SCALE_HOSTS)


def relist_period(base: float, hosts: int) -> float:
    """Mean seconds between an agent's check lists: `base`, times hosts / SCALE_HOSTS beyond
    SCALE_HOSTS hosts, so the cluster lists about SCALE_HOSTS / `base` times a second and
    sends bytes linear in N (each list is every record). The check only looks for a gap the
    watch did not report; a reported gap or compaction lists at once."""
    return base * max(1.0, hosts / SCALE_HOSTS)


def alive_every(ttl: float) -> float:
    """Seconds between liveness renewals: half the TTL, but at least ALIVE_MARGIN s (and a
    third of the TTL) before it would expire. 90 s (the default): every 45 s; 30 s: 15 s;
    10 s (the lab's): 3.3 s. Each renewal is an etcd call (~0.5-1 ms of etcd CPU through the
    JSON gateway): at 1,000 hosts the default is ~22 a second."""
    return max(0.5, ttl / 3, min(ttl / 2, ttl - ALIVE_MARGIN))


def companion_class(name: str) -> Any:
    import importlib

    module, cls = COMPANIONS[name]
    return getattr(importlib.import_module(module), cls)


def probe_backend(backend: Backend) -> None:
    """Unsupported, naming what is missing, when this host cannot run the backend."""
    for name in backend.companions:
        companion_class(name).probe()


def companion_options(backend: Backend, cfg: ClusterConfig | None) -> dict[str, Any]:
    opts = backend.options(cfg) if cfg is not None and backend.Options is not None else None
    return dict(opts.__dict__) if opts is not None else {}


config_key, hosts_prefix, alive_prefix = keys.cluster_config, keys.cluster_hosts, keys.cluster_alive
subnet_key = keys.cluster_subnet


def read_config(store: Store, net: str) -> ClusterConfig:
    kv = store.get(config_key(net))
    if kv is None:
        raise NotFound(f"cluster network {net!r} has no config at {config_key(net)} (run `muslin cluster init` first)")
    return ClusterConfig.from_dict({**kv.value, "network": net})


def init_config(store: Store, cfg: ClusterConfig, probe: bool = True) -> ClusterConfig:
    """Store a cluster network's config; an identical one is fine, a different one conflicts.
    With `probe`, a backend this host cannot run is refused (Unsupported) first."""
    cfg.validate()
    if probe:
        probe_backend(get_backend(cfg.backend))
    kv = store.get(config_key(cfg.network))
    if kv is not None:
        have = ClusterConfig.from_dict({**kv.value, "network": cfg.network})
        if have == cfg:
            return cfg
        hd, wd = have.to_dict(), cfg.to_dict()
        what = ", ".join(f"{k} {hd.get(k, '(none)')!s} -> {wd.get(k, '(none)')!s}"
                         for k in sorted(set(hd) | set(wd)) if hd.get(k) != wd.get(k))
        raise Conflict(f"cluster network {cfg.network!r} already exists with another config ({what}); a cluster "
                       f"network's config does not change once stored (make a new network)")
    store.put(config_key(cfg.network), cfg.to_dict(), expect=0)
    return cfg


def check_underlay(cfg: ClusterConfig, underlay_nets: list[str]) -> None:
    """Invalid when a cluster CIDR overlaps this host's underlay subnet (its routes would
    shadow the underlay's)."""
    for net in underlay_nets:
        u = ipaddress.ip_network(net, strict=False)
        for c in cfg.cidrs:
            if c.version == u.version and c.overlaps(u):
                raise Invalid(f"cluster network {cfg.network}: its CIDR {c} overlaps the underlay subnet {u} "
                              f"of this host; choose a CIDR outside the hosts' own networks")


def network_names(store: Store) -> list[str]:
    """Every cluster network with a config in the store."""
    return sorted({k.split("/")[1] for k in store.keys("cluster/") if k.endswith("/config") and k.count("/") == 2})


def list_hosts(store: Store, net: str) -> dict[str, tuple[HostRecord, int]]:
    """hostname -> (record, lease)."""
    out = {}
    for kv in store.list(hosts_prefix(net)):
        try:
            rec = HostRecord.from_dict(kv.value)
        except (TypeError, AttributeError):
            continue
        out[kv.key[len(hosts_prefix(net)):]] = (rec, kv.lease)
    return out


def list_alive(store: Store, net: str) -> dict[str, dict[str, Any]]:
    """hostname -> liveness value, for the hosts whose agent renewed its liveness lease."""
    p = alive_prefix(net)
    return {kv.key[len(p):]: kv.value if isinstance(kv.value, dict) else {} for kv in store.list(p)}


class Agent:
    def __init__(self, store: Store, network: str, hostname: str, state_dir: str | Path,
                 underlay_dev: str = "", underlay_ip: str = "", resync: float = DEFAULT_RESYNC,
                 log: Callable[[str], None] | None = None, host: Any = None, relist: float = DEFAULT_RELIST,
                 status: bool = True, underlay_ip6: str = "") -> None:
        """`host`: control/agent_host.py (default the real one); `status`: write the status file;
        `underlay_ip6`: the IPv6 underlay address (default: the underlay device's first global one)."""
        self.store = store
        self.network = names.check_name(network, "network name", NAME_MAX)
        self.hostname = names.check_name(hostname, "hostname", NAME_MAX)
        self.state_dir = Path(state_dir)
        self.underlay_dev = underlay_dev
        self.underlay_ip = underlay_ip
        self.underlay_ip6 = underlay_ip6
        self.resync = resync
        self._log = log or (lambda m: print(time.strftime("%H:%M:%S"), m, file=sys.stderr, flush=True))
        self.cfg: ClusterConfig | None = None
        self.local: Local | None = None
        self.lease = 0  # the subnet lease (record + subnet key)
        self.alive_lease = 0  # the liveness lease (alive key)
        self.peers: dict[str, HostRecord] = {}
        self.leave_on_stop = False
        self.problems: tuple[str, ...] = ()
        self.etcd_ok = True
        self.reconciles = 0
        self.last_changes = ""
        self.resyncing = False  # the reconcile running is a periodic resync's (metrics: drift repairs)
        self._overlay = None
        self._companions: dict[str, Any] | None = None
        from muslin.control.agent_host import RealHost
        self.host = host if host is not None else RealHost()
        self.relist = relist
        self.cache: WatchCache | None = None
        self.table: PeerTable | None = None
        self.status_enabled = status
        self._status_dirty = False
        self._status_due = 0.0
        self._watch_down = 0.0  # since when the watch has been down (monotonic; 0: it is up)
        self._full_due = False  # an incremental change failed: the next loop runs a full reconcile
        self.counts = {"events": 0, "peer_reconciles": 0, "full_reconciles": 0, "relists": 0}

    # -- small helpers -----------------------------------------------------------------
    def log(self, msg: str) -> None:
        self._log(f"[{self.hostname}/{self.network}] {msg}")

    @property
    def memory_path(self) -> Path:
        return self.state_dir / "cluster" / f"{self.network}.json"

    @property
    def status_path(self) -> Path:
        return self.state_dir / "cluster" / f"{self.network}.status.json"

    def _remembered(self) -> dict[str, Any]:
        try:
            return json.loads(self.memory_path.read_text())
        except (OSError, ValueError):
            return {}

    def _remember(self, **kw: Any) -> None:
        self.memory_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.memory_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self._remembered(), **kw}))
        tmp.replace(self.memory_path)

    @property
    def backend(self) -> Backend:
        assert self.cfg is not None
        return get_backend(self.cfg.backend)

    def companions(self) -> dict[str, Any]:
        if self._companions is None:
            opts = companion_options(self.backend, self.cfg)
            self._companions = {n: companion_class(n)(self.state_dir, self.network, self.log, opts)
                                for n in self.backend.companions}
        return self._companions

    def facts(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for c in self.companions().values():
            out.update(c.facts())
        return out

    def overlay(self):
        if self._overlay is None:
            self._overlay = self.host.overlay()
        return self._overlay

    def _retry(self, what: str, fn: Callable[[], Any], stop: threading.Event) -> Any:
        """Call fn until the store answers (backoff 0.5 s .. 5 s), logging each outage once."""
        delay = 0.5
        while True:
            try:
                out = fn()
                if not self.etcd_ok:
                    self.log("store reachable again")
                self.etcd_ok = True
                return out
            except Unavailable as e:
                if self.etcd_ok:
                    self.log(f"{what}: {e}; retrying")
                self.etcd_ok = False
                self.write_status()
                if stop.wait(delay):
                    raise
                delay = min(5.0, delay * 2)

    # -- joining -------------------------------------------------------------------------
    def join(self, stop: threading.Event) -> None:
        self.cfg = self._retry("reading the cluster config", lambda: read_config(self.store, self.network), stop)
        probe_backend(self.backend)  # before anything changes
        dev, ip, net, mtu = self.overlay().underlay(self.underlay_dev, self.underlay_ip)
        self._remember(backend=self.cfg.backend)
        self.underlay_dev = dev
        ip6, net6 = self.overlay().underlay6(dev, self.underlay_ip6) if self.backend.wants_underlay6(self.cfg) \
            else ("", "")
        check_underlay(self.cfg, [n for n in (net, net6) if n])
        self._retry("leasing a subnet", lambda: self.register(ip, net, mtu, ip6, net6), stop)
        self.setup_local()

    def register(self, ip: str = "", net: str = "", mtu: int = 0, ip6: str = "", net6: str = "") -> None:
        """Lease a subnet of each of the network's address families (the ones we had, if
        still ours or free) and publish our record.

        The record and the subnet keys live under the subnet lease and are written in one
        txn (a dual-stack host holds both subnets or neither). A restarted agent finds its
        lease (remembered in <state>/cluster/<net>.json) and its record as it published them
        and writes nothing; a record under a lease of another TTL (an older agent's) moves
        to a new subnet lease in one txn, so peers never see it vanish."""
        assert self.cfg is not None
        cfg = self.cfg
        if self.local is not None:
            r = self.local.record
            ip, net, mtu, ip6, net6 = r.underlay, r.underlay_net, self.local.underlay_mtu, r.underlay6, r.underlay_net6
        mem = self._remembered()
        facts = self.facts()
        v6_under = self.backend.wants_underlay6(cfg)
        hkey = hosts_prefix(self.network) + self.hostname
        sprefix = subnet_key(self.network, "")
        for attempt in range(20):
            # our record, and the subnet keys (keys only: peers' values are not needed)
            mine = self.store.get(hkey)
            taken_keys = set(self.store.keys(sprefix))
            had = HostRecord.from_dict(mine.value) if mine is not None and isinstance(mine.value, dict) else None
            # the subnets this host had (its record's, then the remembered ones): kept if still ours or free
            preferred = [s for s in (*(had.subnets if had else ()), mem.get("subnet", ""), mem.get("subnet6", "")) if s]
            held: dict[str, Any] = {}  # subnet keys of ours (ours to keep), with their revisions
            for cand in set(preferred):
                k = subnet_key(self.network, cand)
                kv = self.store.get(k) if k in taken_keys else None
                if kv is not None and isinstance(kv.value, dict) and kv.value.get("hostname") == self.hostname:
                    held[k] = kv
            lease = 0
            ours = {self.lease} if self.lease else set()
            if mem.get("lease") and mem.get("subnet_ttl") == cfg.subnet_ttl:
                ours.add(mem["lease"])
            if mine is not None and mine.lease in ours:
                try:
                    self.store.refresh_lease(mine.lease)
                    lease = mine.lease
                except NotFound:
                    lease = 0
            if not lease:
                lease = self.store.grant_lease(cfg.subnet_ttl)
            taken = [ipaddress.ip_network(k.rsplit("/", 1)[1].replace("_", "/")) for k in taken_keys if k not in held]
            try:
                subnets = [self._pick(c, p, taken, preferred, attempt) for c, p in cfg.families()]
            except Exhausted as e:
                if lease != (mine.lease if mine else 0):
                    self.store.revoke_lease(lease)
                held_by = sum(1 for t in taken if t.version == cfg.network_cidr.version)  # one per host and family
                raise Exhausted(f"cluster network {self.network}: {e} for host {self.hostname} "
                                f"({held_by} hosts hold one)") from None
            bare = HostRecord(self.hostname, str(subnets[0]), ip, net,
                              subnet6=str(subnets[1]) if len(subnets) > 1 else "",
                              underlay6=ip6 if v6_under else "", underlay_net6=net6 if v6_under else "")
            rec = replace(bare, published=self.backend.publish(cfg, bare, facts))
            skeys = [subnet_key(self.network, str(sn)) for sn in subnets]
            cur = {k: held.get(k) or (self.store.get(k) if k in taken_keys else None) for k in skeys}
            published = (mine is not None and mine.lease == lease and mine.value == rec.to_dict()
                         and all(c is not None and c.lease == lease and c.value.get("hostname") == self.hostname
                                 for c in cur.values()))
            if not published:
                compares = [Compare(hkey, mine.mod_revision if mine else 0)]
                compares += [Compare(k, c.mod_revision if c else 0) for k, c in cur.items()]
                ops: list = [Put(hkey, rec.to_dict(), lease=lease)]
                ops += [Put(k, {"hostname": self.hostname}, lease=lease) for k in skeys]
                ops += [Delete(subnet_key(self.network, old)) for old in (had.subnets if had else ())
                        if subnet_key(self.network, old) not in skeys]
                try:
                    self.store.txn(compares, ops)
                except Conflict:
                    if lease != (mine.lease if mine else 0):
                        self.store.revoke_lease(lease)
                    time.sleep(random.uniform(0, 0.02 * attempt))
                    continue
            # leases of ours that now hold nothing (our keys moved to `lease` in the txn)
            for old in {self.lease, mine.lease if mine else 0} - {0, lease}:
                try:
                    self.store.revoke_lease(old)
                except MuslinError:
                    pass
            self.lease = lease
            if self.local is None or self.local.record.subnets != rec.subnets:
                how = "kept" if published else "leased"
                self.log(f"{how} {' and '.join(rec.subnets)} (underlay {ip}{' ' + ip6 if rec.underlay6 else ''}, "
                         f"lease {lease:x}, ttl {cfg.subnet_ttl}s)")
            if self.local is not None and self.local.record.published != rec.published:
                self.log(f"published {', '.join(f'{k} {v}' for k, v in rec.published)}")
            self.local = Local(rec, self.underlay_dev, mtu, facts)
            want_mem = {"subnet": rec.subnet, "lease": lease, "subnet_ttl": cfg.subnet_ttl}
            if rec.subnet6 or mem.get("subnet6"):
                want_mem["subnet6"] = rec.subnet6
            if any(mem.get(k, "") != v for k, v in want_mem.items()):
                self._remember(**want_mem)
            return
        raise Conflict(f"cluster network {self.network}: could not lease a subnet, too much contention")

    @staticmethod
    def _pick(cidr: Any, prefix: int, taken: list[Any], preferred: list[str], attempt: int) -> Any:
        """A free /prefix of cidr: the one this host had, else (hosts joining together all
        want the first free one: spread them after a first conflict) a random or the lowest."""
        from muslin.ipam.ranges import carve

        prefer = next((ipaddress.ip_network(s) for s in preferred if ipaddress.ip_network(s).version == cidr.version),
                      None)
        if prefer is None and attempt:
            prefer = ipaddress.ip_network((int(cidr.network_address) + (random.randrange(1 << (prefix - cidr.prefixlen))
                                           << (cidr.max_prefixlen - prefix)), prefix))
        try:
            return carve(cidr, prefix, taken, prefer=prefer)
        except Exhausted:
            raise Exhausted(f"no free /{prefix} left in {cidr}") from None

    # -- liveness ------------------------------------------------------------------------
    def publish_alive(self) -> None:
        """cluster/<net>/alive/<host> under a fresh short lease: this agent runs. Status reads
        it; no agent routes by it."""
        assert self.cfg is not None
        old = self.alive_lease or self._remembered().get("alive_lease", 0)
        lease = self.store.grant_lease(self.cfg.lease_ttl)
        self.store.put(alive_prefix(self.network) + self.hostname,
                       {"pid": os.getpid(), "since": round(time.time(), 3)}, lease=lease)
        if old and old != lease:  # a previous run's: it holds nothing now
            try:
                self.store.revoke_lease(old)
            except MuslinError:
                pass
        self.alive_lease = lease
        self._remember(alive_lease=lease)

    def renew_alive(self) -> None:
        try:
            self.store.refresh_lease(self.alive_lease)
        except NotFound:
            self.log("our liveness lease expired; publishing it again")
            try:
                self.publish_alive()
            except NotFound as e:  # the fresh lease expired before the put (an overloaded host)
                self.log(f"could not publish our liveness ({e}); trying again at the next renewal")

    def renew_subnet(self) -> bool:
        """Refresh the subnet lease; True when it had expired and we leased again."""
        try:
            self.store.refresh_lease(self.lease)
            return False
        except NotFound:
            self.log("our subnet lease expired; leasing again")
            self.register()
            return True

    def local_network(self):
        from muslin.model.types import IPRange, Network
        assert self.cfg is not None and self.local is not None
        mtu = self.backend.network_mtu(self.cfg, self.local)
        ranges = tuple((IPRange(ipaddress.ip_network(s)),) for s in self.local.record.subnets)
        labels = ((keys.CLUSTER_LABEL, self.network), (keys.CLUSTER_CIDR_LABEL, str(self.cfg.network_cidr)))
        if self.cfg.cidr6:
            labels += ((keys.CLUSTER_CIDR6_LABEL, self.cfg.cidr6),)
        return Network(name=self.network, driver="bridge", range_sets=ranges, mtu=mtu,
                       masquerade=False, isolate=True, origin="cli", labels=labels)

    def muslin(self):
        return self.host.muslin(self.state_dir)

    def setup_local(self) -> None:
        """The local side: an ordinary Muslin bridge network on our subnet."""
        want = self.local_network()
        m = self.muslin()
        try:
            have = m.find_network(self.network)
            if have is not None and (have.subnets != want.subnets or have.mtu != want.mtu):
                self.log(f"local network {self.network} had {have.subnets} mtu {have.mtu}; recreating")
                m.delete_network(self.network, force=True)
                have = None
            if have is None:
                m.create_network(want)
            else:
                m.repair_network(self.network)  # bridge gone by hand? make it again
        finally:
            m.close()
        self.host.forwarding()

    # -- reconciling ---------------------------------------------------------------------
    def _table(self) -> PeerTable:
        if self.table is None or self.table.backend is not self.backend:
            self.table = PeerTable(self.backend)
        return self.table

    def reconcile(self) -> None:
        """The full diff: desired from every peer (the local copy) vs what the kernel has."""
        t0 = time.perf_counter()
        changes = self._reconcile()
        events.emit("reconcile", loop="cluster", seconds=time.perf_counter() - t0, changes=changes,
                    drift=bool(changes) and self.resyncing)

    def _reconcile(self) -> int:
        """Returns how many kernel changes it applied."""
        assert self.cfg is not None and self.local is not None
        want = self._table().rebuild(self.cfg, self.local, self.peers)
        ov = self.overlay()
        have = ov.observe(self.backend.owned(self.network, dict(self.local.facts)))
        changes = diff(want, owned(have, self.cfg.cidrs))
        n = sum(len(getattr(changes, f.name)) for f in dataclasses.fields(changes))  # metrics: changes applied
        if not changes.empty:
            ov.apply(changes)
            self.last_changes = changes.summary()
            self.log(f"reconciled {len(self.peers) - (self.hostname in self.peers)} peers: {self.last_changes}")
        self._after(want)
        self.counts["full_reconciles"] += 1
        return n

    def reconcile_peers(self, hosts: set[str]) -> None:
        """Only the changed peers' kernel objects: what they should be vs what they were."""
        assert self.cfg is not None and self.local is not None
        t0 = time.perf_counter()
        try:
            want, had = self._table().update(self.cfg, self.local, self.peers, hosts)
            changes = diff(want, had)
            n = sum(len(getattr(changes, f.name)) for f in dataclasses.fields(changes))
            if not changes.empty:
                self.overlay().apply(changes)
                self.last_changes = changes.summary()
                names = ", ".join(sorted(hosts)[:5]) + (f" and {len(hosts) - 5} more" if len(hosts) > 5 else "")
                self.log(f"reconciled {len(hosts)} of {len(self.peers) - (self.hostname in self.peers)} peers "
                         f"({names}): {self.last_changes}")
        except BaseException:
            self._full_due = True  # the table may be ahead of the kernel now: compare them soon
            raise
        self._after(self.table.whole() if self.backend.companions else None)  # type: ignore[union-attr]
        self.counts["peer_reconciles"] += 1
        events.emit("reconcile", loop="cluster", seconds=time.perf_counter() - t0, changes=n)

    def _after(self, want: Desired | None) -> None:
        """The companions' configs, the problems, the status."""
        if want is not None:
            for name, c in self.companions().items():
                c.ensure(want.companion_config(name))
        problems = self.table.problems if self.table is not None else ()
        if problems != self.problems:
            for p in problems:
                if p not in self.problems:
                    self.log(p)
        first = self.reconciles == 0 or problems != self.problems
        self.problems = problems
        self.reconciles += 1
        self.write_status(now=first)

    def tick(self) -> bool:
        """Ask the companions whether something needs a reconcile (about once a second);
        facts that changed (a rotated key) are published first."""
        if not any([c.tick() for c in self.companions().values()]):
            return False
        if self.local is not None and dict(self.local.facts) != self.facts():
            self.register()
        return True

    def safe_reconcile(self, hosts: set[str] | None = None) -> None:
        """Reconcile (all, or only `hosts`); a kernel-side failure is logged and retried at
        the next resync (the store being away is handled by the caller)."""
        try:
            if hosts is None:
                self._full_due = False
                self.reconcile()
            else:
                self.reconcile_peers(hosts)
        except Unavailable as e:
            if "etcd" in str(e) or "store" in str(e):
                raise
            self._reconcile_failed(e)
        except MuslinError as e:
            self._reconcile_failed(e)

    def _reconcile_failed(self, e: MuslinError) -> None:
        line = f"reconcile failed: {e}; retrying at the next resync"
        if line not in self.problems:
            self.log(line)
        self.problems = (line,)
        self.write_status(now=True)

    # -- status --------------------------------------------------------------------------
    def write_status(self, now: bool = False) -> None:
        """The status file (read by `muslin lab status`, `muslin cluster status`): at once
        when `now`, else at most every 0.2 s + 0.4 ms per peer (it lists every peer)."""
        if not self.status_enabled:
            return
        self._status_dirty = True
        if now or time.monotonic() >= self._status_due:
            self._write_status()

    def flush_status(self) -> None:
        if self._status_dirty and time.monotonic() >= self._status_due:
            self._write_status()

    def _write_status(self) -> None:
        self._status_dirty = False
        self._status_due = time.monotonic() + 0.2 + 0.0004 * len(self.peers)
        st = {"hostname": self.hostname, "network": self.network, "pid": os.getpid(),
              "backend": self.cfg.backend if self.cfg else "", "lease": self.lease,
              "alive_lease": self.alive_lease,
              "subnet": self.local.record.subnet if self.local else "",
              "subnet6": self.local.record.subnet6 if self.local else "",
              "underlay": self.local.record.underlay if self.local else "",
              "peers": {h: p.to_dict() for h, p in sorted(self.peers.items()) if h != self.hostname},
              "problems": list(self.problems), "store_ok": self.etcd_ok, "reconciles": self.reconciles,
              "last_changes": self.last_changes, "time": time.time(), "counts": dict(self.counts)}
        if self.cache is not None:
            st["watch"] = {"connected": self.cache.connected, "revision": self.cache.revision,
                           "lists": self.cache.lists, "gaps": self.cache.gaps, "events": self.cache.events}
        if self._companions:
            try:
                st["companions"] = {n: c.status() for n, c in self._companions.items()}
            except MuslinError as e:
                st["companions"] = {"error": str(e)}
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(st))
            tmp.replace(self.status_path)
        except OSError:
            pass

    # -- the hosts' records: a local copy kept by one watch ------------------------------
    def _decode(self, key: str, value: Any) -> HostRecord:
        try:
            return HostRecord.from_dict(value)
        except (TypeError, AttributeError, KeyError):
            self.log(f"ignoring a malformed record for host {key[len(hosts_prefix(self.network)):]!r}")
            raise ValueError(key) from None

    def _load_peers(self) -> set[str]:
        """List the hosts (the first time, a gap, the rare check) and watch from there;
        returns the hosts whose record changed."""
        if self.cache is None:
            self.cache = WatchCache(self.store, hosts_prefix(self.network), decode=self._decode)
        else:
            self.counts["relists"] += 1
        return self._take(self.cache.load())

    def _take(self, changes: list[Change]) -> set[str]:
        n = len(hosts_prefix(self.network))
        hosts = set()
        for c in changes:
            h = c.key[n:]
            if c.new is None:
                self.peers.pop(h, None)
            else:
                self.peers[h] = c.new
            hosts.add(h)
        self.counts["events"] += len(changes)
        return hosts

    def _relist_after(self, first: bool = False) -> float:
        """Seconds to the next check list: 0.5x .. 1.5x `relist` (the first in 0.05x .. 1.5x,
        so agents started together do not list together)."""
        return relist_period(self.relist, len(self.peers)) * random.uniform(0.05 if first else 0.5, 1.5)

    def _resync_after(self) -> float:
        """Seconds to the next resync: `resync`, longer beyond SCALE_HOSTS peers (resync_period)."""
        return resync_period(self.resync, len(self.peers))

    def _watch_health(self, now: float) -> None:
        assert self.cache is not None
        if self.cache.connected:
            self._watch_down = 0.0
            if not self.etcd_ok:
                self.log("store reachable again")
                self.etcd_ok = True
                self.write_status(now=True)
        elif not self._watch_down:
            self._watch_down = now
        elif now - self._watch_down > WATCH_GRACE and self.etcd_ok:
            self.log("store unavailable: the watch is down; keeping the kernel as it is and retrying")
            self.etcd_ok = False
            self.write_status(now=True)

    def wake(self) -> None:
        """Make the loop look at once (after its stop event was set: it stops now, not within TICK)."""
        if self.cache is not None:
            self.cache.wake()

    def _check_self(self) -> bool:
        """Our record as we published it? Publish it again if not (True: it changed)."""
        assert self.local is not None
        if self.peers.get(self.hostname) == self.local.record:
            return False
        self.log("our record is gone or changed; publishing it again")
        self.register()
        return True

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        try:
            self.join(stop)
            self._retry("listing hosts", self._load_peers, stop)
            self._retry("publishing liveness", self.publish_alive, stop)
        except Unavailable:
            if stop.is_set():  # asked to stop while the store was away: nothing was made
                self.close()
                return
            raise
        assert self.cfg is not None and self.cache is not None
        self.reconcile()
        renew_alive = alive_every(self.cfg.lease_ttl)
        subnet_every = max(0.5, min(self.cfg.subnet_ttl / 3, 600.0))
        now = time.monotonic()
        next_alive, next_subnet = now + renew_alive, now + subnet_every
        next_sync, next_relist, next_tick = now + self._resync_after(), now + self._relist_after(first=True), now + TICK
        ticks = bool(self.backend.companions)
        delay = 0.5
        while not stop.is_set():
            try:
                self.resyncing = False
                now = time.monotonic()
                due = min(next_alive, next_subnet, next_sync, next_relist, next_tick if ticks else next_sync,
                          self._status_due if self._status_dirty else next_sync, now + TICK)
                hosts = self._take(self.cache.poll(max(0.0, due - now)))
                first_event = time.monotonic() if hosts else 0.0
                if hosts:  # a burst is one reconcile: take what follows within SETTLE (10 SETTLE at most)
                    first = time.monotonic()
                    while not stop.is_set() and time.monotonic() - first < 10 * SETTLE:
                        more = self.cache.poll(SETTLE)
                        if not more:
                            break
                        hosts |= self._take(more)
                full = self._full_due
                now = time.monotonic()
                if self.hostname in hosts:
                    hosts.discard(self.hostname)
                    full = self._check_self() or full
                if now >= next_alive:
                    self.renew_alive()
                    next_alive = now + renew_alive
                if now >= next_subnet:
                    full = self.renew_subnet() or full
                    next_subnet = now + subnet_every
                if ticks and now >= next_tick:
                    next_tick = now + TICK
                    try:
                        full = self.tick() or full
                    except MuslinError as e:
                        if isinstance(e, Unavailable) and ("etcd" in str(e) or "store" in str(e)):
                            raise
                        self._reconcile_failed(e)
                if now >= next_relist:
                    next_relist = now + self._relist_after()
                    hosts |= self._load_peers()
                    hosts.discard(self.hostname)
                    full = self._check_self() or full
                    if self.store.get(alive_prefix(self.network) + self.hostname) is None:
                        self.log("our liveness key is gone; publishing it again")
                        self.publish_alive()
                if now >= next_sync:
                    next_sync = now + self._resync_after()
                    try:
                        self.setup_local()
                    except Unavailable:
                        raise
                    except MuslinError as e:
                        self._reconcile_failed(e)
                    full = True
                    self.resyncing = True
                if full:
                    self.safe_reconcile()
                elif hosts:
                    self.safe_reconcile(hosts)
                if first_event:
                    events.emit("watch_lag", network=self.network, seconds=time.monotonic() - first_event)
                self._watch_health(now)
                self.flush_status()
                delay = 0.5
            except Unavailable as e:
                if self.etcd_ok:
                    self.log(f"store unavailable: {e}; keeping the kernel as it is and retrying")
                    self.etcd_ok = False
                    self.write_status(now=True)
                if stop.wait(delay):
                    break
                delay = min(5.0, delay * 2)
        if self.leave_on_stop:
            self.leave()
        self.close()

    # -- leaving -------------------------------------------------------------------------
    def leave(self) -> None:
        """Give the subnet back, drop the liveness key, and remove what this network made
        on this host. Peers remove the host when they see its record go."""
        self.log("leaving the cluster network")
        mem = self._remembered()
        leases = [x for x in (self.lease or mem.get("lease", 0), self.alive_lease or mem.get("alive_lease", 0)) if x]
        try:
            for lease in leases:
                self.store.revoke_lease(lease)
            self.store.txn([], [Delete(hosts_prefix(self.network) + self.hostname),
                                Delete(alive_prefix(self.network) + self.hostname)]
                           + [Delete(subnet_key(self.network, mem[k])) for k in ("subnet", "subnet6") if mem.get(k)])
        except Unavailable as e:
            self.log(f"could not reach the store to give the subnet back ({e}); it expires with the subnet lease")
        backend = self.cfg.backend if self.cfg else mem.get("backend", "")
        cidr = ",".join(map(str, self.cfg.cidrs)) if self.cfg else ""
        teardown_local(self.state_dir, self.network, cidr, backend, self.log, self.host)
        if mem:
            self._remember(lease=0, alive_lease=0)
        self.lease = self.alive_lease = 0
        self._companions = None

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if self._overlay is not None:
            self._overlay.close()
            self._overlay = None


def teardown_local(state_dir: Path, network: str, cidr: str = "", backend: str = "",
                   log: Callable[[str], None] | None = None, host: Any = None) -> None:
    """Remove this host's side of a cluster network: what its backend made (reconciled to
    nothing: our routes, its devices and peers, its nft tables), its companions, the local
    bridge network. With the backend unknown, every backend's objects are looked for.
    Idempotent. The remembered subnet and a WireGuard key stay (a host that joins again
    prefers the subnet; the key is its identity). `host`: control/agent_host.py (default real)."""
    from muslin.control.agent_host import RealHost

    host = host if host is not None else RealHost()
    say = log or (lambda m: None)
    ov = host.overlay()
    try:
        for b in ([get_backend(backend)] if backend else list(BACKENDS.values())):
            comps = {n: companion_class(n)(state_dir, network, say, {}) for n in b.companions}
            facts: dict[str, str] = {}
            for c in comps.values():
                facts.update(c.facts(create=False))
            names = b.owned(network, facts)
            have = ov.observe(names)
            if cidr:  # one or several, comma-separated
                have = owned(have, [ipaddress.ip_network(c) for c in cidr.split(",")])
            else:  # only routes through the backend's own devices can be told apart
                have = replace(have, routes=frozenset(r for r in have.routes if r.dev in names.devices))
            changes = diff(Desired(), have)
            if not changes.empty:
                ov.apply(changes)
            for c in comps.values():
                c.stop()
    finally:
        ov.close()
    m = host.muslin(state_dir)
    try:
        if m.find_network(network) is not None:
            m.delete_network(network, force=True)
    finally:
        m.close()
    for p in (state_dir / "cluster" / f"{network}.status.json",):
        p.unlink(missing_ok=True)


def rotate_key(state_dir: str | Path) -> str:
    """Give this host a new WireGuard key pair (<state>/wireguard.key, 0600); its running
    agents load it within a second and publish the new public key, and their peers follow.
    Returns the new public key."""
    from muslin.dataplane.wireguard import rotate_key as rotate

    return rotate(Path(state_dir))


def main() -> None:
    from muslin.control.agent_cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()

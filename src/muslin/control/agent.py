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
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from muslin import events
from muslin.backends.base import Backend
from muslin.backends.model import NAME_MAX, ClusterConfig, Desired, HostRecord, Local, diff, owned
from muslin.backends.registry import BACKENDS, get_backend
from muslin.model import keys, names
from muslin.model.errors import Conflict, Exhausted, MuslinError, NotFound, Unavailable
from muslin.store.base import Compare, Delete, Put, Store

DEFAULT_RESYNC = 10.0
SETTLE = 0.05  # seconds: events this close together are reconciled as one batch

# The host side of the backends' companions (backends/base.py), by name: module, class.
# Each has probe() (static: Unsupported before anything changes), facts(create), tick(),
# ensure(config), status() and stop().
COMPANIONS = {"bird": ("muslin.control.agent_bird", "Bird"),
              "wireguard": ("muslin.dataplane.wireguard", "WireGuardHost")}


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
        if ClusterConfig.from_dict({**kv.value, "network": cfg.network}) == cfg:
            return cfg
        raise Conflict(f"cluster network {cfg.network!r} already exists with another config")
    store.put(config_key(cfg.network), cfg.to_dict(), expect=0)
    return cfg


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
                 log: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.network = names.check_name(network, "network name", NAME_MAX)
        self.hostname = names.check_name(hostname, "hostname", NAME_MAX)
        self.state_dir = Path(state_dir)
        self.underlay_dev = underlay_dev
        self.underlay_ip = underlay_ip
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
            from muslin.dataplane.overlay import Overlay
            self._overlay = Overlay()
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
        self._retry("leasing a subnet", lambda: self.register(ip, net, mtu), stop)
        self.setup_local()

    def register(self, ip: str = "", net: str = "", mtu: int = 0) -> None:
        """Lease a subnet (the one we had, if still ours or free) and publish our record.

        Both keys live under the subnet lease. A restarted agent finds its lease (remembered
        in <state>/cluster/<net>.json) and its record as it published them and writes nothing;
        a record under a lease of another TTL (an older agent's) moves to a new subnet lease
        in one txn, so peers never see it vanish."""
        from muslin.ipam.ranges import carve

        assert self.cfg is not None
        cfg = self.cfg
        if self.local is not None:
            ip, net, mtu = self.local.record.underlay, self.local.record.underlay_net, self.local.underlay_mtu
        mem = self._remembered()
        facts = self.facts()
        hkey = hosts_prefix(self.network) + self.hostname
        for _ in range(10):
            hosts = {kv.key: kv for kv in self.store.list(f"cluster/{self.network}/")}
            mine = hosts.get(hkey)
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
            prefer_s = (mine.value.get("subnet") if mine else None) or mem.get("subnet")
            taken = []
            for k, kv in hosts.items():
                if k.startswith(f"cluster/{self.network}/subnets/") and kv.value.get("hostname") != self.hostname:
                    taken.append(ipaddress.ip_network(k.rsplit("/", 1)[1].replace("_", "/")))
            prefer = ipaddress.ip_network(prefer_s) if prefer_s else None
            try:
                subnet = carve(cfg.network_cidr, cfg.host_prefix, taken, prefer=prefer)
            except Exhausted:
                if lease != (mine.lease if mine else 0):
                    self.store.revoke_lease(lease)
                raise Exhausted(f"cluster network {self.network}: no free /{cfg.host_prefix} left in {cfg.cidr} "
                                f"for host {self.hostname} ({len(taken)} hosts hold one)") from None
            bare = HostRecord(self.hostname, str(subnet), ip, net)
            rec = replace(bare, published=self.backend.publish(cfg, bare, facts))
            skey = subnet_key(self.network, str(subnet))
            cur_s = hosts.get(skey)
            published = (mine is not None and mine.lease == lease and mine.value == rec.to_dict()
                         and cur_s is not None and cur_s.lease == lease
                         and cur_s.value.get("hostname") == self.hostname)
            if not published:
                compares = [Compare(hkey, mine.mod_revision if mine else 0),
                            Compare(skey, cur_s.mod_revision if cur_s else 0)]
                ops: list = [Put(hkey, rec.to_dict(), lease=lease), Put(skey, {"hostname": self.hostname}, lease=lease)]
                if mine is not None and mine.value.get("subnet") and mine.value["subnet"] != str(subnet):
                    ops.append(Delete(subnet_key(self.network, mine.value["subnet"])))
                try:
                    self.store.txn(compares, ops)
                except Conflict:
                    if lease != (mine.lease if mine else 0):
                        self.store.revoke_lease(lease)
                    continue
            # leases of ours that now hold nothing (our keys moved to `lease` in the txn)
            for old in {self.lease, mine.lease if mine else 0} - {0, lease}:
                try:
                    self.store.revoke_lease(old)
                except MuslinError:
                    pass
            self.lease = lease
            if self.local is None or self.local.record.subnet != rec.subnet:
                how = "kept" if published else "leased"
                self.log(f"{how} {subnet} (underlay {ip}, lease {lease:x}, ttl {cfg.subnet_ttl}s)")
            if self.local is not None and self.local.record.published != rec.published:
                self.log(f"published {', '.join(f'{k} {v}' for k, v in rec.published)}")
            self.local = Local(rec, self.underlay_dev, mtu, facts)
            if (mem.get("subnet"), mem.get("lease"), mem.get("subnet_ttl")) != (str(subnet), lease, cfg.subnet_ttl):
                self._remember(subnet=str(subnet), lease=lease, subnet_ttl=cfg.subnet_ttl)
            return
        raise Conflict(f"cluster network {self.network}: could not lease a subnet, too much contention")

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
            self.publish_alive()

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
        subnet = ipaddress.ip_network(self.local.record.subnet)
        return Network(name=self.network, driver="bridge", range_sets=((IPRange(subnet),),), mtu=mtu,
                       masquerade=False, isolate=True, origin="cli",
                       labels=((keys.CLUSTER_LABEL, self.network), (keys.CLUSTER_CIDR_LABEL, str(self.cfg.network_cidr))))

    def muslin(self):
        from muslin.control.service import Muslin
        return Muslin(state_dir=self.state_dir)

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
        from muslin.dataplane.links import write_sysctl
        write_sysctl("net/ipv4/ip_forward", "1")

    # -- reconciling ---------------------------------------------------------------------
    def reconcile(self) -> None:
        t0 = time.perf_counter()
        changes = self._reconcile()
        events.emit("reconcile", loop="cluster", seconds=time.perf_counter() - t0, changes=changes,
                    drift=bool(changes) and self.resyncing)

    def _reconcile(self) -> int:
        """Returns how many kernel changes it applied."""
        assert self.cfg is not None and self.local is not None
        peers = [p for h, p in sorted(self.peers.items()) if h != self.hostname]
        want = self.backend.desired(self.cfg, self.local, peers)
        ov = self.overlay()
        have = ov.observe(self.backend.owned(self.network, dict(self.local.facts)))
        changes = diff(want, owned(have, self.cfg.network_cidr))
        n = sum(len(getattr(changes, f.name)) for f in dataclasses.fields(changes))  # metrics: changes applied
        if not changes.empty:
            ov.apply(changes)
            self.last_changes = changes.summary()
            self.log(f"reconciled {len(peers)} peers: {self.last_changes}")
        for name, c in self.companions().items():
            c.ensure(want.companion_config(name))
        if want.problems != self.problems:
            for p in want.problems:
                self.log(p)
        self.problems = want.problems
        self.reconciles += 1
        self.write_status()
        return n

    def tick(self) -> bool:
        """Ask the companions whether something needs a reconcile (about once a second);
        facts that changed (a rotated key) are published first."""
        if not any([c.tick() for c in self.companions().values()]):
            return False
        if self.local is not None and dict(self.local.facts) != self.facts():
            self.register()
        return True

    def safe_reconcile(self) -> None:
        """Reconcile; a kernel-side failure is logged and retried at the next resync
        (the store being away is handled by the caller)."""
        try:
            self.reconcile()
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
        self.write_status()

    def write_status(self) -> None:
        st = {"hostname": self.hostname, "network": self.network, "pid": os.getpid(),
              "backend": self.cfg.backend if self.cfg else "", "lease": self.lease,
              "alive_lease": self.alive_lease,
              "subnet": self.local.record.subnet if self.local else "",
              "underlay": self.local.record.underlay if self.local else "",
              "peers": {h: p.to_dict() for h, p in sorted(self.peers.items()) if h != self.hostname},
              "problems": list(self.problems), "store_ok": self.etcd_ok, "reconciles": self.reconciles,
              "last_changes": self.last_changes, "time": time.time()}
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

    def _load_peers(self) -> int:
        rev = self.store.revision()
        self.peers = {h: rec for h, (rec, _lease) in list_hosts(self.store, self.network).items()}
        return rev + 1

    def _apply_event(self, ev) -> None:
        host = ev.key[len(hosts_prefix(self.network)):]
        if ev.type == "delete":
            self.peers.pop(host, None)
        else:
            try:
                self.peers[host] = HostRecord.from_dict(ev.value)
            except (TypeError, AttributeError):
                self.log(f"ignoring a malformed record for host {host!r}")

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        try:
            self.join(stop)
            next_rev = self._retry("listing hosts", self._load_peers, stop)
            self._retry("publishing liveness", self.publish_alive, stop)
        except Unavailable:
            if stop.is_set():  # asked to stop while the store was away: nothing was made
                self.close()
                return
            raise
        assert self.cfg is not None
        self.reconcile()
        alive_every = max(0.5, self.cfg.lease_ttl / 3)
        subnet_every = max(0.5, min(self.cfg.subnet_ttl / 3, 600.0))
        next_alive = time.monotonic() + alive_every
        next_subnet = time.monotonic() + subnet_every
        next_sync = time.monotonic() + self.resync
        delay = 0.5
        while not stop.is_set():
            try:
                dirty = self.resyncing = False
                due = min(next_alive, next_subnet, next_sync)
                wait = max(0.05, min(1.0, due - time.monotonic()))
                # the watch's timeout is an idle one: after the first event, take only what
                # follows within SETTLE (a burst is one reconcile), then reconcile at once
                first_event = 0.0
                for timeout in (wait, SETTLE):
                    first = time.monotonic()
                    for ev in self.store.watch(hosts_prefix(self.network), next_rev, timeout=timeout):
                        first_event = first_event or time.monotonic()
                        self._apply_event(ev)
                        next_rev = ev.revision + 1
                        dirty = True
                        now = time.monotonic()
                        if stop.is_set() or now >= due or timeout == wait or now - first > 10 * SETTLE:
                            break
                    if not dirty or stop.is_set():
                        break
                now = time.monotonic()
                if now >= next_alive:
                    self.renew_alive()
                    next_alive = now + alive_every
                if now >= next_subnet:
                    dirty = self.renew_subnet() or dirty
                    next_subnet = now + subnet_every
                try:
                    dirty = self.tick() or dirty
                except MuslinError as e:
                    if isinstance(e, Unavailable) and ("etcd" in str(e) or "store" in str(e)):
                        raise
                    self._reconcile_failed(e)
                if now >= next_sync:
                    next_rev = self._load_peers()
                    mine = self.peers.get(self.hostname)
                    if mine is None or mine != self.local.record:  # type: ignore[union-attr]
                        self.log("our record is gone or changed; publishing it again")
                        self.register()
                        next_rev = self._load_peers()
                    if self.store.get(alive_prefix(self.network) + self.hostname) is None:
                        self.log("our liveness key is gone; publishing it again")
                        self.publish_alive()
                    try:
                        self.setup_local()
                    except Unavailable:
                        raise
                    except MuslinError as e:
                        self._reconcile_failed(e)
                    dirty = True
                    next_sync = now + self.resync
                    self.resyncing = True
                if dirty:
                    self.safe_reconcile()
                    if first_event:
                        events.emit("watch_lag", network=self.network, seconds=time.monotonic() - first_event)
                if not self.etcd_ok:
                    self.log("store reachable again")
                    self.etcd_ok = True
                    self.write_status()
                delay = 0.5
            except Unavailable as e:
                if self.etcd_ok:
                    self.log(f"store unavailable: {e}; keeping the kernel as it is and retrying")
                    self.etcd_ok = False
                    self.write_status()
                if stop.wait(delay):
                    break
                delay = min(5.0, delay * 2)
                if "compacted" in str(e):
                    try:
                        next_rev = self._load_peers()
                    except Unavailable:
                        pass
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
                           + ([Delete(subnet_key(self.network, mem["subnet"]))] if mem.get("subnet") else []))
        except Unavailable as e:
            self.log(f"could not reach the store to give the subnet back ({e}); it expires with the subnet lease")
        backend = self.cfg.backend if self.cfg else mem.get("backend", "")
        teardown_local(self.state_dir, self.network, self.cfg.cidr if self.cfg else "", backend, self.log)
        if mem:
            self._remember(lease=0, alive_lease=0)
        self.lease = self.alive_lease = 0
        self._companions = None

    def close(self) -> None:
        if self._overlay is not None:
            self._overlay.close()
            self._overlay = None


def teardown_local(state_dir: Path, network: str, cidr: str = "", backend: str = "",
                   log: Callable[[str], None] | None = None) -> None:
    """Remove this host's side of a cluster network: what its backend made (reconciled to
    nothing: our routes, its devices and peers, its nft tables), its companions, the local
    bridge network. With the backend unknown, every backend's objects are looked for.
    Idempotent. The remembered subnet and a WireGuard key stay (a host that joins again
    prefers the subnet; the key is its identity)."""
    from muslin.control.service import Muslin
    from muslin.dataplane.overlay import Overlay

    say = log or (lambda m: None)
    ov = Overlay()
    try:
        for b in ([get_backend(backend)] if backend else list(BACKENDS.values())):
            comps = {n: companion_class(n)(state_dir, network, say, {}) for n in b.companions}
            facts: dict[str, str] = {}
            for c in comps.values():
                facts.update(c.facts(create=False))
            names = b.owned(network, facts)
            have = ov.observe(names)
            if cidr:
                have = owned(have, ipaddress.ip_network(cidr))
            else:  # only routes through the backend's own devices can be told apart
                have = replace(have, routes=frozenset(r for r in have.routes if r.dev in names.devices))
            changes = diff(Desired(), have)
            if not changes.empty:
                ov.apply(changes)
            for c in comps.values():
                c.stop()
    finally:
        ov.close()
    m = Muslin(state_dir=state_dir)
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

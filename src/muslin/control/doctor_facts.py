"""What `muslin doctor` looks at, gathered into control/doctor.py's `Facts`: this state dir's
store (networks, endpoints, IPAM owners, sandboxes), the kernel of the namespace the
process runs in (links, the nft table, sysctls, conntrack, the reap group, feature probes),
through the dataplane modules, and with a cluster store each cluster network: the config,
the host records, the leases, etcd's health and the desired vs. observed routes, FDB and
neighbour entries (the agent's own backends compute the desired ones).

Reading only, except for two probes that undo themselves: a key written to each store and
deleted again, and the kernel's link-kind probe (a link made on loopback and deleted)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from muslin.control.doctor import BRIDGE_NF, ClusterFacts, Facts, rp_filter_paths
from muslin.model import keys
from muslin.model.errors import MuslinError

PROBE_KINDS = ("bridge", "veth", "vxlan", "macvlan", "ipvlan", "vlan", "wireguard", "geneve")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _store_probe(store: Any, key: str) -> str:
    """'' when a key can be written, read back and deleted; else why not (one line)."""
    try:
        store.put(key, {"pid": os.getpid(), "time": time.time()})
        ok = store.get(key) is not None
        store.delete(key)
        return "" if ok else "a key written could not be read back"
    except MuslinError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - e.g. sqlite3.OperationalError: readonly database
        return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _ruleset(rs: Any, skeleton_ok: bool | None = None) -> dict[str, Any]:
    d = {"owner": rs.owner, "elements": {k: sorted(v) for k, v in rs.elements.items() if v}}
    if skeleton_ok is not None:
        d["skeleton_ok"] = skeleton_ok
    return d


def local_facts(m: Any) -> Facts:
    from muslin.control import firewall
    from muslin.dataplane import docker_user, libnft, nft, rtnl
    from muslin.dataplane.links import Host
    from muslin.dataplane.nsexec import netns_exists
    from muslin.firewall.compiler import DIGEST, compile, sysctls_for

    f = Facts(state_dir=str(m.state_dir))
    f.networks = [n.to_dict() for n in m.list_networks()]
    f.endpoints = [e.to_dict() for e in m.endpoints()]
    f.sandboxes = [k[len(keys.SANDBOXES):] for k in m.store.keys(keys.SANDBOXES)]
    f.ipam_owners = [k[len(keys.IPAM_OWNERS):] for k in m.store.keys(keys.IPAM_OWNERS)]
    f.reap_owners = [o for o in f.ipam_owners if o.startswith(keys.REAP_OWNERS)]
    f.store_write = _store_probe(m.store, f"doctor/probe-{os.getpid()}")

    with rtnl.Socket() as nl:
        infos = nl.links()
    by_index = {i.index: i.name for i in infos}
    f.links = {i.name: {"mtu": i.mtu, "up": i.up, "kind": i.kind, "master": by_index.get(i.master, "")}
               for i in infos}
    with Host() as h:
        f.retired = sorted(h.retired_links())
        f.probes = {k: h.kind_supported(k) for k in PROBE_KINDS}
    f.probes["libnftables"] = libnft.available()
    f.probes["nft"] = shutil.which("nft") is not None or os.access("/usr/sbin/nft", os.X_OK)
    f.probes["native forwarder"] = _native(Path(sys.executable).parent / "muslin-cni")

    state = firewall.desired(m)
    if not state.empty:
        f.firewall_desired = _ruleset(compile(state, m.owner))
        f.sysctls_desired = sysctls_for(state)
    try:
        observed = nft.observe()
        f.firewall_observed = None if observed is None else _ruleset(observed, observed.digest == DIGEST)
    except MuslinError as e:
        f.firewall_error = str(e)
    f.docker_user = docker_user.observe(m.owner_id)

    missing = set()
    for e in f.endpoints:
        if e.get("netns") and not netns_exists(e["netns"]):
            missing.add(e["netns"])
    for s in f.sandboxes:
        if not netns_exists(f"/run/netns/{s}"):
            missing.add(f"/run/netns/{s}")
    f.netns_missing = sorted(missing)

    bridges = [n["bridge"] for n in f.networks if n.get("bridge")]
    for p in list(f.sysctls_desired) + [BRIDGE_NF] + rp_filter_paths(bridges + list(f.links)):
        f.sysctls[p] = _read(p)
    f.dns = dns_facts(Path(m.state_dir), f.networks)
    count = _read("/proc/sys/net/netfilter/nf_conntrack_count")
    limit = _read("/proc/sys/net/netfilter/nf_conntrack_max")
    if count is not None and limit is not None:
        f.conntrack = (int(count), int(limit))
    return f


CANARY = "muslin-doctor-canary.invalid"


def dns_facts(state_dir: Path, networks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """muslind's DNS for this state dir (its marker <state>/dns.pid: "PID PORT"): whether its
    process lives, and per bridge network's gateway whether a canary query gets an answer."""
    import socket

    try:
        pid_s, port_s = (state_dir / "dns.pid").read_text().split()[:2]
        pid, port = int(pid_s), int(port_s)
    except (OSError, ValueError):
        return None
    out: dict[str, Any] = {"pid": pid, "port": port, "alive": Path(f"/proc/{pid}").exists(), "answers": {}}
    qid = os.getpid() & 0xFFFF
    query = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(
        bytes([len(p)]) + p.encode() for p in CANARY.split(".")) + b"\x00\x00\x01\x00\x01"
    for n in networks:
        if n.get("driver") != "bridge" or n.get("internal"):
            continue
        for rs in n.get("range_sets", []):
            for r in rs:
                gw = r.get("gateway")
                if not gw or ":" in gw:
                    continue
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(2.0)
                try:
                    s.sendto(query, (gw, port))
                    data = s.recv(512)
                    ok = data[:2] == query[:2]
                    out["answers"][f"{n['name']} {gw}:{port}"] = (f"rcode {data[3] & 0x0F}" if ok else "a wrong reply")
                except OSError as e:
                    out["answers"][f"{n['name']} {gw}:{port}"] = f"no answer ({e.strerror or e})"
                finally:
                    s.close()
    return out


def _native(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def cluster_facts(store: Any, network: str, hostname: str, m: Any) -> ClusterFacts:
    from muslin.backends.model import HostRecord, Local, owned
    from muslin.backends.registry import get_backend
    from muslin.control.agent import list_alive, list_hosts, read_config
    from muslin.control.cluster import lease_left, local_status
    from muslin.dataplane.overlay import Overlay

    c = ClusterFacts(network=network, hostname=hostname)
    try:
        cfg = read_config(store, network)
        c.config = cfg.to_dict()
        hosts = list_hosts(store, network)
        c.alive = sorted(list_alive(store, network))
    except MuslinError as e:
        c.error = str(e)
        return c
    c.store_write = _store_probe(store, f"doctor/{network}/{hostname}-{os.getpid()}")
    health = getattr(store, "health", None)
    if health is not None:
        try:
            c.members = health()
        except MuslinError as e:
            c.members = [{"endpoint": "?", "ok": False, "error": str(e)}]
    mine = hosts.get(hostname)
    c.peers = [rec.to_dict() for h, (rec, _) in sorted(hosts.items()) if h != hostname]
    local_net = m.find_network(network)
    c.local_mtu = local_net.mtu if local_net is not None else 0
    if mine is None:
        return c
    rec, lease = mine
    c.record = rec.to_dict()
    c.lease_left = lease_left(store, lease)
    backend = get_backend(cfg.backend)
    c.overhead = backend.overhead
    facts: dict[str, str] = {}  # what the agent's companions found (the interface name, the public key)
    for comp in (local_status(Path(m.state_dir), network).get("companions") or {}).values():
        if isinstance(comp, dict):
            facts.update({k: v for k, v in comp.items() if isinstance(v, str)})
    ov = Overlay()
    try:
        dev, _ip, _net, mtu = ov.underlay("", rec.underlay)
        c.underlay_dev, c.underlay_mtu = dev, mtu
        want = backend.desired(cfg, Local(rec, dev, mtu, tuple(sorted(facts.items()))),
                               [HostRecord.from_dict(p) for p in c.peers])
        have = owned(ov.observe(backend.owned(network, facts)), cfg.network_cidr)
    finally:
        ov.close()
    c.desired, c.observed = _objects(want), _objects(have)
    if "wireguard" in backend.companions and facts.get("ifname"):
        c.handshakes = _handshakes(facts["ifname"])
    return c


def _handshakes(ifname: str) -> dict[str, float | None]:
    """public key -> seconds since the peer's latest handshake (None: never)."""
    from muslin.dataplane import wireguard

    try:
        shown = wireguard.show(ifname)
    except MuslinError:
        return {}
    now = time.time()
    return {k: (round(now - t, 1) if t else None) for k, t, _rx, _tx in (shown.handshakes if shown else ())}


def _objects(d: Any) -> dict[str, Any]:
    return {"routes": sorted([r.dst, r.gateway, r.dev, r.onlink] for r in d.routes),
            "fdb": sorted([e.dev, e.mac, e.dst] for e in d.fdb),
            "neighs": sorted([n.dev, n.ip, n.mac] for n in d.neighs),
            "peers": sorted([p.dev, p.public_key, p.endpoint] for p in d.peers),
            "device": next(({"name": x.name, "mtu": x.mtu, "kind": type(x).__name__} for x in d.devices), None)}


def gather(m: Any, cluster_store: Any = None, networks: list[str] | None = None, hostname: str = "") -> Facts:
    """Every fact of this host; with a cluster store, its cluster networks (those named, or
    those this state dir's agent runs: <state>/cluster/<net>.status.json)."""
    f = local_facts(m)
    if cluster_store is not None:
        from muslin.control.cluster import local_status

        names = networks or sorted(p.name[: -len(".status.json")]
                                   for p in (Path(m.state_dir) / "cluster").glob("*.status.json"))
        for net in names:
            host = local_status(Path(m.state_dir), net).get("hostname") or hostname
            f.cluster.append(cluster_facts(cluster_store, net, host, m))
    return f

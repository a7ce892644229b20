"""The topology: hosts, networks (bridges, subnets, VNIs), sandboxes (addresses, labels,
published ports), services (none yet: a hook) and the tunnels between hosts, as one plain
dict that `muslin topology` prints and muslind serves at /topology (control/topology_render.py
draws it as DOT, SVG or a page).

Sources: this host's store (its networks and endpoints) and, with a cluster store, every
host's record and the summary each host publishes of its own networks and sandboxes
(`cluster/<net>/topology/<host>`, under that host's subnet lease: it goes when the host
goes). muslind publishes its summary (`Publisher`) when it changes, so any host's
/topology shows the whole cluster.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any, Callable

log = logging.getLogger("muslin.topology")


def topology_key(network: str, host: str) -> str:
    return f"cluster/{network}/topology/{host}"


def _sandbox_name(ep: Any) -> str:
    cid = ep.container_id or ep.endpoint_id
    return cid[:12] if re.fullmatch(r"[0-9a-f]{64}", cid) else cid


def local_summary(m: Any, host: str) -> dict[str, Any]:
    """This host's networks and sandboxes, from its store."""
    nets = []
    for n in sorted(m.list_networks(), key=lambda n: n.name):
        nets.append({"id": f"net:{host}/{n.name}", "host": host, "name": n.name, "driver": n.driver,
                     "bridge": n.bridge, "subnets": [str(s) for s in n.subnets], "mtu": n.mtu,
                     "labels": dict(n.labels), "cluster": dict(n.labels).get("muslin.cluster", ""),
                     "internal": n.internal})
    sandboxes: dict[str, dict[str, Any]] = {}
    for ep in sorted(m.endpoints(), key=lambda e: (e.network, e.endpoint_id)):
        name = _sandbox_name(ep)
        sid = f"sb:{host}/{name}"
        sb = sandboxes.setdefault(sid, {"id": sid, "host": host, "name": name, "netns": ep.netns,
                                        "labels": {}, "interfaces": []})
        labels = getattr(ep, "labels", ()) or ()
        sb["labels"].update(dict(labels))
        sb["interfaces"].append({"network": f"net:{host}/{ep.network}", "network_name": ep.network,
                                 "ifname": ep.ifname, "mac": ep.mac, "addresses": [str(a) for a in ep.addresses],
                                 "ports": [p.to_dict() for p in ep.ports], "aliases": list(ep.aliases)})
    return {"host": host, "networks": nets, "sandboxes": list(sandboxes.values())}


def build(host: str, local: dict[str, Any], cluster: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The graph (pure): this host's summary, plus per cluster network its config, host
    records, liveness and the summaries the other hosts published.

    `cluster`: [{"network", "config": {...}, "hosts": {h: record dict}, "alive": [h...],
    "summaries": {h: summary}}]."""
    hosts: dict[str, dict[str, Any]] = {host: {"id": f"host:{host}", "name": host, "self": True, "underlay": "",
                                               "subnets": {}, "alive": True}}
    summaries = {host: local}
    tunnels = []
    cluster_nets = []
    for c in cluster or []:
        cfg, net = c.get("config", {}), c["network"]
        backend = cfg.get("backend", "")
        cluster_nets.append({"name": net, "backend": backend, "cidr": cfg.get("cidr", ""),
                             "vni": cfg.get("vni") if backend == "vxlan" else None,
                             "port": cfg.get("port") if backend == "vxlan" else None})
        for h, rec in sorted(c.get("hosts", {}).items()):
            d = hosts.setdefault(h, {"id": f"host:{h}", "name": h, "self": h == host, "underlay": "",
                                     "subnets": {}, "alive": False})
            d["underlay"] = rec.get("underlay", "") or d["underlay"]
            d["subnets"][net] = rec.get("subnet", "")
            d["alive"] = h == host or h in c.get("alive", [])
        for h, s in c.get("summaries", {}).items():
            if h != host:
                summaries.setdefault(h, s)
        names = sorted(c.get("hosts", {}))
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                t = {"id": f"tun:{net}/{a}-{b}", "network": net, "a": f"host:{a}", "b": f"host:{b}",
                     "kind": backend}
                if backend == "vxlan":
                    t.update(vni=cfg.get("vni"), port=cfg.get("port"))
                elif backend == "wireguard":
                    t.update(port=dict(cfg.get("options") or {}).get("port", 51820), encrypted=True)
                tunnels.append(t)
    networks, sandboxes = [], []
    for h, s in sorted(summaries.items()):
        if h not in hosts:
            hosts[h] = {"id": f"host:{h}", "name": h, "self": False, "underlay": "", "subnets": {}, "alive": False}
        vni = {c["name"]: c for c in cluster_nets}
        for n in s.get("networks", []):
            n = dict(n)
            c = vni.get(n.get("cluster") or "")
            if c and c.get("vni") is not None:
                n["vni"] = c["vni"]
            networks.append(n)
        sandboxes += s.get("sandboxes", [])
    return {"host": host, "hosts": [hosts[h] for h in sorted(hosts)], "networks": networks,
            "sandboxes": sorted(sandboxes, key=lambda s: s["id"]), "services": [], "tunnels": tunnels,
            "cluster_networks": cluster_nets}


def cluster_view(store: Any, network: str) -> dict[str, Any]:
    """One cluster network as `build` takes it, read from the cluster store."""
    from muslin.control.agent import list_alive, list_hosts, read_config

    cfg = read_config(store, network)
    prefix = f"cluster/{network}/topology/"
    summaries = {}
    for kv in store.list(prefix):
        if isinstance(kv.value, dict):
            summaries[kv.key[len(prefix):]] = kv.value
    return {"network": network, "config": cfg.to_dict(),
            "hosts": {h: rec.to_dict() for h, (rec, _lease) in list_hosts(store, network).items()},
            "alive": sorted(list_alive(store, network)), "summaries": summaries}


def gather(m: Any, host: str, cluster_store: Any = None, networks: list[str] | None = None) -> dict[str, Any]:
    """The topology seen from this host: its store, and the cluster store when given (every
    cluster network in it, or those named)."""
    local = local_summary(m, host)
    views = []
    if cluster_store is not None:
        from muslin.control.agent import network_names

        for net in networks or network_names(cluster_store):
            views.append(cluster_view(cluster_store, net))
    return build(host, local, views)


class Publisher:
    """muslind: this host's summary in the cluster store under its subnet lease, written
    when it changed (checked every `interval` seconds), so every host's topology shows it."""

    def __init__(self, muslin: Callable[[], Any], agent: Any, interval: float = 2.0) -> None:
        self.muslin, self.agent, self.interval = muslin, agent, interval
        self._last: tuple[str, int] | None = None
        self.thread = threading.Thread(target=self._run, name="topology", daemon=True)

    def publish_once(self) -> bool:
        a = self.agent
        if not a.lease:
            return False
        text = json.dumps(local_summary(self.muslin(), a.hostname), sort_keys=True)
        if self._last == (text, a.lease):
            return False
        a.store.put(topology_key(a.network, a.hostname), json.loads(text), lease=a.lease)
        self._last = (text, a.lease)
        return True

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.publish_once()
            except Exception as e:  # noqa: BLE001 - retried at the next round
                log.debug("topology publish: %s", e)
                self._last = None

    def start(self, stop: threading.Event) -> None:
        self.thread = threading.Thread(target=self._run, args=(stop,), name="topology", daemon=True)
        self.thread.start()

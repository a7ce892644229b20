"""`muslin doctor`: what should hold on this host, checked against what does, each failure
explained with what to run to fix it.

Pure: every check is a function of `Facts` (plain data that control/doctor_facts.py gathers
from the store and the kernel), so each is unit-tested without root. A check returns a
`Result`: status "ok", "fail" or "info" (a fact worth knowing that needs no fix, e.g. a
kernel feature that is missing and its fallback), a summary line, detail lines and a fix.
`muslin doctor` exits 0 only when no check fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

CONNTRACK_LIMIT = 0.8  # of nf_conntrack_max
HANDSHAKE_STALE = 180.0  # seconds: WireGuard renews a live session's handshake every 120 s
MAX_LISTED = 8  # details listed per check (then "... and N more")


@dataclass(frozen=True)
class Result:
    check: str
    status: str  # ok | fail | info
    summary: str
    details: tuple[str, ...] = ()
    fix: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["details"], d["fix"] = list(self.details), list(self.fix)
        return d


@dataclass
class ClusterFacts:
    """One cluster network as this host sees it."""

    network: str
    hostname: str
    config: dict[str, Any] = field(default_factory=dict)  # ClusterConfig.to_dict(); {} when unreadable
    error: str = ""  # the store could not be read: why
    store_write: str = ""  # "" = a probe key was written, read back and deleted; else why not
    members: list[dict[str, Any]] = field(default_factory=list)  # etcd health: [{"endpoint", "ok", "error"}]
    record: dict[str, Any] = field(default_factory=dict)  # this host's HostRecord, {} when it has none
    lease_left: int | None = None  # seconds this host's subnet lease has left (-1 gone, None unknown)
    alive: list[str] = field(default_factory=list)  # hosts holding their liveness key
    peers: list[dict[str, Any]] = field(default_factory=list)  # the other hosts' records
    underlay_dev: str = ""
    underlay_mtu: int = 0
    desired: dict[str, Any] = field(default_factory=dict)  # {"routes", "fdb", "neighs", "peers": [[...]],
    #                                                         "device": {"name", "mtu", "kind"} | None}
    observed: dict[str, Any] = field(default_factory=dict)  # the same shape, from the kernel
    local_mtu: int = 0  # the MTU of this host's side (the bridge network of the same name)
    overhead: int = 0  # bytes per packet the backend takes off the underlay MTU (vxlan 50)
    handshakes: dict[str, float | None] = field(default_factory=dict)  # wireguard: public key -> age (s)


@dataclass
class Facts:
    state_dir: str
    networks: list[dict[str, Any]] = field(default_factory=list)  # Network.to_dict()
    endpoints: list[dict[str, Any]] = field(default_factory=list)  # Endpoint.to_dict()
    links: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {mtu, up, kind, master (name)}
    firewall_desired: dict[str, Any] | None = None  # {"owner", "elements": {set: [..]}}; None: no table wanted
    firewall_observed: dict[str, Any] | None = None  # the same plus "skeleton_ok"; None: no table
    firewall_error: str = ""
    sysctls_desired: dict[str, str] = field(default_factory=dict)  # /proc/sys path -> value
    sysctls: dict[str, str | None] = field(default_factory=dict)  # path -> observed (None: absent)
    docker_user: dict[str, Any] | None = None  # {"bridges": [...]} when the DOCKER-USER chain exists
    retired: list[str] = field(default_factory=list)  # links in the reap group
    reap_owners: list[str] = field(default_factory=list)  # IPAM owners reap/<ifname>
    ipam_owners: list[str] = field(default_factory=list)
    sandboxes: list[str] = field(default_factory=list)  # CLI sandbox records
    netns_missing: list[str] = field(default_factory=list)  # netns paths of endpoints/sandboxes that are gone
    store_write: str = ""  # "" = ok, else why the probe failed
    conntrack: tuple[int, int] | None = None  # (count, max)
    probes: dict[str, bool] = field(default_factory=dict)  # feature -> present
    dns: dict[str, Any] | None = None  # {"pid", "port", "alive", "answers": {"NET GW:PORT": "rcode N" | why not}}
    cluster: list[ClusterFacts] = field(default_factory=list)
    extra: list[Result] = field(default_factory=list)  # checks of parts not on this host yet (hooks)


def _sysctl_name(path: str) -> str:
    return path.removeprefix("/proc/sys/").replace("/", ".")


def _more(lines: list[str]) -> tuple[str, ...]:
    if len(lines) <= MAX_LISTED:
        return tuple(lines)
    return tuple(lines[:MAX_LISTED]) + (f"... and {len(lines) - MAX_LISTED} more",)


def _repair(f: Facts, *names: str) -> str:
    return f"muslin --state-dir {f.state_dir} network repair" + "".join(f" {n}" for n in names)


def _bridged(f: Facts) -> list[dict[str, Any]]:
    return [n for n in f.networks if n.get("driver") == "bridge" and n.get("bridge")]


# -- checks ----------------------------------------------------------------------------

def check_firewall(f: Facts) -> Result:
    name = "firewall"
    want, have = f.firewall_desired, f.firewall_observed
    if f.firewall_error:
        return Result(name, "fail", f"cannot read the nftables table inet muslin: {f.firewall_error}",
                      fix=("nft list table inet muslin   # see what nft says",))
    if want is None:
        if have is None:
            return Result(name, "ok", "no Muslin network here and no table inet muslin")
        return Result(name, "fail", "table inet muslin exists but no network of this state dir needs it",
                      fix=(_repair(f) + "   # removes it when it is this state dir's",))
    if have is None:
        return Result(name, "fail", "table inet muslin is missing (isolation, NAT and published ports are off)",
                      fix=(_repair(f),))
    problems = []
    if have.get("owner") != want.get("owner"):
        problems.append(f"the table's owner mark is {have.get('owner') or '(none)'!r}, this state dir's is "
                        f"{want.get('owner')!r}")
    if not have.get("skeleton_ok", True):
        problems.append("its chains or rules differ from what Muslin writes (edited by hand?)")
    for s in sorted(set(want.get("elements", {})) | set(have.get("elements", {}))):
        w, h = set(want["elements"].get(s, ())), set(have.get("elements", {}).get(s, ()))
        problems += [f"set {s}: missing {e}" for e in sorted(w - h)]
        problems += [f"set {s}: unexpected {e}" for e in sorted(h - w)]
    if not problems:
        n = sum(len(v) for v in want.get("elements", {}).values())
        return Result(name, "ok", f"table inet muslin matches the desired state ({n} elements)")
    return Result(name, "fail", f"table inet muslin differs from the desired state ({len(problems)} differences)",
                  _more(problems), (_repair(f),))


def check_sysctls(f: Facts) -> Result:
    bad = []
    for path, value in f.sysctls_desired.items():
        have = f.sysctls.get(path)
        if have is not None and have != value:
            bad.append((path, have, value))
    if not f.sysctls_desired:
        return Result("forwarding", "ok", "no network here needs forwarding")
    if not bad:
        return Result("forwarding", "ok", ", ".join(f"{_sysctl_name(p)}={v}" for p, v in f.sysctls_desired.items()))
    return Result("forwarding", "fail", "sysctls Muslin's networks need are off",
                  tuple(f"{_sysctl_name(p)} is {h}, needed {v}" for p, h, v in bad),
                  tuple(f"sysctl -w {_sysctl_name(p)}={v}" for p, _, v in bad))


BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def check_bridge_netfilter(f: Facts) -> Result:
    name = "bridge netfilter"
    v = f.sysctls.get(BRIDGE_NF)
    if v is None:
        return Result(name, "info", "bridge netfilter is not loaded here: bridged frames skip iptables/nft inet hooks")
    if v != "1" or f.docker_user is None:
        return Result(name, "ok", f"bridge-nf-call-iptables={v}" + ("" if f.docker_user is None else
                                                                     "; Docker's FORWARD chain is not in the path"))
    have = set(f.docker_user.get("bridges", ()))
    missing = [n["bridge"] for n in _bridged(f) if n["bridge"] not in have]
    if not missing:
        return Result(name, "ok", "bridge-nf-call-iptables=1 and every Muslin bridge has its accept pair in "
                      "DOCKER-USER (Docker's FORWARD policy is DROP)")
    return Result(name, "fail", "bridge-nf-call-iptables=1 sends bridged frames through Docker's FORWARD (policy "
                  "DROP), and these bridges have no accept pair in DOCKER-USER: their containers cannot talk",
                  tuple(missing), (_repair(f),))


def rp_filter_paths(links: list[str]) -> list[str]:
    return ["/proc/sys/net/ipv4/conf/all/rp_filter"] + [f"/proc/sys/net/ipv4/conf/{d}/rp_filter" for d in links]


def _muslin_links(f: Facts) -> list[str]:
    out = [n["bridge"] for n in _bridged(f) if n["bridge"] in f.links]
    for c in f.cluster:
        vx = (c.desired.get("device") or {}).get("name")
        for d in (vx, c.underlay_dev):
            if d and d in f.links and d not in out:
                out.append(d)
    return out


def check_rp_filter(f: Facts) -> Result:
    name = "rp_filter"
    all_v = f.sysctls.get("/proc/sys/net/ipv4/conf/all/rp_filter") or "0"
    strict = []
    for d in _muslin_links(f):
        v = f.sysctls.get(f"/proc/sys/net/ipv4/conf/{d}/rp_filter") or "0"
        eff = max(int(all_v), int(v))  # the kernel uses the larger of conf/all and conf/<dev>
        if eff == 1:
            strict.append(d)
    if not strict:
        return Result(name, "ok", "no Muslin link filters strictly (rp_filter 0 or 2)")
    fix = [f"sysctl -w net.ipv4.conf.{d}.rp_filter=2" for d in strict]
    if all_v == "1":
        fix.insert(0, "sysctl -w net.ipv4.conf.all.rp_filter=2")
    return Result(name, "fail", "strict reverse-path filtering (rp_filter=1) drops packets whose way back "
                  "leaves by another link (multi-homed sandboxes, peers, DNAT from the host)",
                  tuple(f"{d}: rp_filter is strict" for d in strict), tuple(fix))


def check_mtu(f: Facts) -> Result:
    bad, fix = [], []
    for n in _bridged(f):
        br = f.links.get(n["bridge"])
        if br and n.get("mtu") and br["mtu"] != n["mtu"]:
            bad.append(f"bridge {n['bridge']} of {n['name']}: mtu {br['mtu']}, the network's is {n['mtu']}")
            fix.append(f"ip link set dev {n['bridge']} mtu {n['mtu']}")
        want = n.get("mtu") or (br or {}).get("mtu")
        for e in f.endpoints:
            lk = f.links.get(e.get("host_ifname", "")) if e["network"] == n["name"] else None
            if lk and want and lk["mtu"] != want:
                bad.append(f"veth {e['host_ifname']} of {e['endpoint_id']} on {n['name']}: mtu {lk['mtu']}, the "
                           f"network's is {want}")
                fix.append(f"ip link set dev {e['host_ifname']} mtu {want}")
    for c in f.cluster:
        vx = c.desired.get("device")
        if vx and c.underlay_mtu:
            have = f.links.get(vx["name"])
            if have and have["mtu"] > c.underlay_mtu - c.overhead:
                bad.append(f"{vx['name']}: mtu {have['mtu']} leaves no room for the {c.config.get('backend', '')} "
                           f"overhead ({c.overhead}) on the underlay {c.underlay_dev} (mtu {c.underlay_mtu})")
                fix.append(f"ip link set dev {vx['name']} mtu {c.underlay_mtu - c.overhead}")
            limit = min(vx["mtu"], c.underlay_mtu - c.overhead)
        else:
            limit = c.underlay_mtu - c.overhead
        if c.local_mtu and limit and c.local_mtu > limit:
            bad.append(f"cluster network {c.network}: this host's side has mtu {c.local_mtu}, more than the "
                       f"overlay carries ({limit})")
            fix.append(f"muslin cluster leave --network {c.network}; restart muslind (its network is made again "
                       f"with mtu {limit})")
    if not bad:
        return Result("mtu", "ok", "bridges, veths and the overlay agree with their networks' MTU")
    return Result("mtu", "fail", f"{len(bad)} MTU mismatches (large packets get dropped or fragmented)",
                  _more(bad), tuple(fix[:MAX_LISTED]))


def check_bridges(f: Facts) -> Result:
    bad = []
    for n in _bridged(f):
        br = f.links.get(n["bridge"])
        if br is None:
            bad.append((n, f"bridge {n['bridge']} of network {n['name']} is missing"))
        elif br.get("kind") != "bridge":
            bad.append((n, f"{n['bridge']} of network {n['name']} is a {br.get('kind') or 'plain'} link, not a bridge"))
        elif not br.get("up"):
            bad.append((n, f"bridge {n['bridge']} of network {n['name']} is down"))
    if not bad:
        return Result("bridges", "ok", f"{len(_bridged(f))} bridges present and up")
    return Result("bridges", "fail", f"{len(bad)} networks lack their bridge", _more([b for _, b in bad]),
                  (_repair(f, *sorted({n["name"] for n, _ in bad})),))


def check_bridge_ports(f: Facts) -> Result:
    """Each endpoint of a bridged network: its host-side veth exists, is a port of the bridge, is up."""
    bridge_of = {n["name"]: n["bridge"] for n in _bridged(f)}
    bad, fix = [], []
    for e in f.endpoints:
        br = bridge_of.get(e["network"])
        hif = e.get("host_ifname", "")
        if not br or not hif or e.get("peer"):  # Docker: not joined yet
            continue
        lk = f.links.get(hif)
        who = f"endpoint {e['endpoint_id']} on {e['network']}"
        if lk is None:
            bad.append(f"{who}: its veth {hif} is gone (the sandbox has no link to the bridge)")
            fix.append(f"reconnect it (the runtime's DEL then ADD, or muslin disconnect/connect); "
                       f"{_repair(f, e['network'])} removes nothing")
        elif lk.get("master") != br:
            bad.append(f"{who}: its veth {hif} is not a port of bridge {br}"
                       + (f" (it is on {lk['master']})" if lk.get("master") else ""))
            fix.append(f"ip link set dev {hif} master {br} up   # or {_repair(f, e['network'])}")
        elif not lk.get("up"):
            bad.append(f"{who}: its veth {hif} is down")
            fix.append(f"ip link set dev {hif} up")
    if not bad:
        return Result("bridge ports", "ok", "every endpoint's veth is up on its bridge")
    return Result("bridge ports", "fail", f"{len(bad)} endpoints are cut off their bridge", _more(bad),
                  tuple(dict.fromkeys(fix))[:MAX_LISTED])


KEEP_OWNERS = ("docker/gw/", "docker/addr/", "reap/")  # held without an endpoint record, on purpose


def check_orphans(f: Facts) -> Result:
    ours = {e.get("host_ifname") for e in f.endpoints} | {e.get("peer") for e in f.endpoints}
    veths = sorted(n for n, lk in f.links.items() if lk.get("kind") == "veth" and n[:2] in ("mv", "mp")
                   and len(n) == 13 and n not in ours and n not in f.retired)
    owners = {e.get("owner") for e in f.endpoints}
    allocs = sorted(o for o in f.ipam_owners if o not in owners and not o.startswith(KEEP_OWNERS))
    lines = [f"veth {v}: Muslin's name, no endpoint" for v in veths]
    fix = [f"ip link delete {v}" for v in veths]
    gone = set(f.netns_missing)
    for e in f.endpoints:
        if e.get("netns") and e["netns"] in gone:
            lines.append(f"endpoint {e['endpoint_id']} on {e['network']}: its netns {e['netns']} is gone "
                         "(the container died without a DEL)")
            fix.append(f"the runtime's DEL or CNI GC for {e.get('container_id') or e['endpoint_id']}"
                       if e.get("owner", "").startswith("cni/") else
                       f"muslin --state-dir {f.state_dir} disconnect {e['network']} {e.get('container_id')}")
    for s in f.sandboxes:
        if f"/run/netns/{s}" in gone:
            lines.append(f"sandbox {s}: its netns /run/netns/{s} is gone")
            fix.append(f"muslin --state-dir {f.state_dir} sandbox rm {s}")
    lines += [f"addresses held by {o}: no endpoint has that owner" for o in allocs]
    if allocs:
        fix.append("CNI owners: the runtime's CNI GC frees them; others: reconnect and disconnect the sandbox")
    if not lines:
        return Result("orphans", "ok", "no orphaned veth, netns or allocation")
    return Result("orphans", "fail", f"{len(lines)} orphans", _more(lines), tuple(dict.fromkeys(fix))[:MAX_LISTED])


def check_reaper(f: Facts) -> Result:
    if not f.retired and not f.reap_owners:
        return Result("DEL reaper", "ok", "nothing waits to be reaped")
    lines = []
    if f.retired:
        lines.append(f"{len(f.retired)} retired links wait to be deleted: {', '.join(f.retired[:MAX_LISTED])}")
    if f.reap_owners:
        lines.append(f"{len(f.reap_owners)} detached endpoints' addresses wait for their link: "
                     f"{', '.join(f.reap_owners[:MAX_LISTED])}")
    return Result("DEL reaper", "fail", "muslind's reaper has work queued (it deletes within its --reap-delay: is "
                  "muslind running?)", tuple(lines),
                  ("start muslind (it reaps what a previous one left)", _repair(f) + "   # reaps them now"))


def check_store(f: Facts) -> Result:
    if not f.store_write:
        return Result("store", "ok", f"the store of {f.state_dir} is readable and writable")
    return Result("store", "fail", f"the store of {f.state_dir}: {f.store_write}", (),
                  (f"ls -l {f.state_dir}   # muslind and the plugins need it writable (0700, root)",))


def check_conntrack(f: Facts) -> Result:
    if f.conntrack is None:
        return Result("conntrack", "info", "no conntrack table here (nf_conntrack not loaded)")
    count, limit = f.conntrack
    if not limit or count < CONNTRACK_LIMIT * limit:
        return Result("conntrack", "ok", f"{count} of {limit} entries ({100 * count / max(limit, 1):.0f}%)")
    return Result("conntrack", "fail", f"conntrack table {100 * count / limit:.0f}% full ({count} of {limit}): new "
                  "connections get dropped when it fills", (),
                  (f"sysctl -w net.netfilter.nf_conntrack_max={limit * 2}",))


def check_dns(f: Facts) -> Result:
    d = f.dns
    if d is None:
        return Result("dns", "info", "muslind's DNS does not run for this state dir (containers get the host's "
                      "resolvers)")
    if not d.get("alive"):
        return Result("dns", "fail", f"muslind's DNS marker names process {d.get('pid')}, which is gone: "
                      "containers are given a resolver that does not answer", (),
                      ("start muslind (it serves DNS again with the same sockets' port)",))
    bad = {k: v for k, v in d.get("answers", {}).items() if not v.startswith("rcode")}
    if not bad:
        return Result("dns", "ok", f"a canary query answered on {len(d.get('answers', {}))} gateways (port "
                      f"{d.get('port')})")
    return Result("dns", "fail", "muslind's DNS does not answer a canary query on every gateway",
                  tuple(f"{k}: {v}" for k, v in sorted(bad.items())),
                  (f"dig @GATEWAY -p {d.get('port')} NAME   # and muslind's log; a restart of muslind binds "
                   "the gateways again",))


FALLBACKS = {
    "bridge": "none: the bridge driver cannot work",
    "veth": "none: no sandbox can be connected",
    "vxlan": "the host-gw or bgp backend",
    "macvlan": "the bridge driver",
    "ipvlan": "driver ipvlan is refused as Unsupported; use macvlan or bridge",
    "vlan": "no 802.1Q sub-interfaces; give macvlan an existing parent",
    "wireguard": "no encrypted backend in the kernel (a userspace one where it exists)",
    "geneve": "vxlan",
    "libnftables": "the nft binary, one process per change (~3 ms instead of ~0.4 ms)",
    "nft": "none: Muslin's firewall cannot be programmed",
    "native forwarder": "the Python entry of muslin-cni (an interpreter start per call)",
}
REQUIRED = ("bridge", "veth")


def check_probes(f: Facts) -> Result:
    missing = [k for k, v in sorted(f.probes.items()) if not v]
    lines = [f"{k}: missing; fallback: {FALLBACKS.get(k, 'none')}" for k in missing]
    have = [k for k, v in sorted(f.probes.items()) if v]
    need_nft = "libnftables" in f.probes and not f.probes.get("libnftables") and not f.probes.get("nft", True)
    fatal = [k for k in REQUIRED if f.probes.get(k) is False] + (["nft"] if need_nft else [])
    if fatal:
        return Result("kernel features", "fail", f"missing what Muslin needs: {', '.join(fatal)}", tuple(lines),
                      ("load the kernel modules (bridge, veth, nf_tables) or install nftables",))
    return Result("kernel features", "info" if missing else "ok",
                  f"present: {', '.join(have)}" + (f"; missing: {', '.join(missing)}" if missing else ""),
                  tuple(lines))


def check_cluster(c: ClusterFacts, state_dir: str) -> list[Result]:
    """The store, etcd, this host's lease, and per peer its route, FDB and neighbour entries."""
    n = f"cluster {c.network}"
    if c.error:
        return [Result(f"{n}: store", "fail", f"cannot read the cluster store: {c.error}", (),
                       ("muslin cluster status --network " + c.network + "   # names the unreachable member",))]
    out = [Result(f"{n}: store", "ok" if not c.store_write else "fail",
                  "the cluster store is readable and writable" if not c.store_write else
                  f"the cluster store is not writable: {c.store_write}",
                  fix=() if not c.store_write else ("check the etcd user's role (readwrite on the key prefix)",))]
    down = [m for m in c.members if not m.get("ok")]
    if c.members:
        out.append(Result(f"{n}: etcd", "fail" if down else "ok",
                          f"{len(c.members) - len(down)} of {len(c.members)} etcd members healthy",
                          tuple(f"{m['endpoint']}: {m.get('error', 'down')}" for m in down),
                          ("etcdctl --endpoints " + ",".join(m["endpoint"] for m in down) + " endpoint health",)
                          if down else ()))
    ttl = int(c.config.get("subnet_ttl", 0) or 0)
    if not c.record:
        out.append(Result(f"{n}: lease", "fail", f"{c.hostname} holds no subnet lease (no record in the store)", (),
                          ("start muslind with --cluster-store and --cluster-network " + c.network,)))
    else:
        lines, bad = [f"subnet {c.record.get('subnet')} on {c.record.get('underlay')}"], False
        if c.lease_left is not None:
            lines.append(f"subnet lease: {c.lease_left} s of {ttl} s left")
            if c.lease_left < 0 or (ttl and c.lease_left < ttl / 3):
                bad = True
        if c.hostname not in c.alive:
            lines.append(f"no liveness key: the agent of {c.hostname} is not running")
            bad = True
        out.append(Result(f"{n}: lease", "fail" if bad else "ok",
                          "this host's leases are " + ("not being renewed" if bad else "renewed"), tuple(lines),
                          ("restart muslind (the agent keeps its subnet and renews its leases)",) if bad else ()))
    out.append(check_peers(c))
    return out


def _entries(d: dict[str, Any], kind: str) -> set[tuple[str, ...]]:
    return {tuple(x) for x in d.get(kind, [])}


def check_peers(c: ClusterFacts) -> Result:
    n = f"cluster {c.network}: peers"
    if not c.peers:
        return Result(n, "ok", "no other host")
    want, have = c.desired, c.observed
    routes, fdb, neighs, wg = (_entries(want, k) - _entries(have, k) for k in ("routes", "fdb", "neighs", "peers"))
    vx = (want.get("device") or {}).get("name", "")
    keys = {p[1]: p for p in want.get("peers", [])}
    lines, fix = [], []
    for p in c.peers:
        h, subnet, under = (p.get(k, "") for k in ("hostname", "subnet", "underlay"))
        vip = p.get("vtep_ip") or dict(p.get("published") or {}).get("vtep_ip", "")
        for r in routes:
            if r[0] == subnet:
                lines.append(f"{h}: route to {subnet} via {r[1]} dev {r[2]} is missing")
                fix.append(f"ip route replace {subnet} via {r[1]} dev {r[2]}{' onlink' if r[3] else ''} proto 77")
        for e in fdb:
            if e[2] == under:
                lines.append(f"{h}: FDB entry {e[1]} dst {under} on {e[0]} is missing")
                fix.append(f"bridge fdb append {e[1]} dev {e[0]} dst {under}")
        for e in neighs:
            if e[1] == vip:
                lines.append(f"{h}: neighbour {vip} lladdr {e[2]} on {e[0]} is missing")
                fix.append(f"ip neigh replace {vip} lladdr {e[2]} dev {e[0]} nud permanent")
        key = dict(p.get("published") or {}).get("public_key", "")
        for e in wg:
            if e[1] == key:
                lines.append(f"{h}: WireGuard peer {key[:12]}... ({e[2]}) is missing on {e[0]}")
                fix.append("(muslind's agent puts the peer back at its next resync; `wg show " + e[0] + "`)")
        if key in keys and key not in {e[1] for e in wg} and c.handshakes:
            age = c.handshakes.get(key)
            if age is None or age > HANDSHAKE_STALE:
                lines.append(f"{h}: WireGuard: " + ("no handshake yet" if age is None else
                                                    f"last handshake {age:.0f} s ago") +
                             f" (a live peer renews it every 2 minutes)")
                fix.append(f"check UDP {keys[key][2]} between the hosts (firewalls, the underlay); "
                           f"`wg show {keys[key][0]}`")
    if vx and not have.get("device"):
        lines.insert(0, f"the {want['device'].get('kind', 'overlay')} device {vx} is missing")
    if not lines:
        return Result(n, "ok", f"{len(c.peers)} peers: " + ", ".join(p.get("hostname", "") for p in c.peers)
                      + " (" + ", ".join(k for k in ("routes", "fdb", "neighs", "peers") if want.get(k))
                      + " present" + (", handshakes fresh" if c.handshakes else "") + ")")
    fix.append("(muslind's agent puts them back at its next resync)")
    return Result(n, "fail", f"{len(lines)} entries to peers are missing: their sandboxes are unreachable",
                  _more(lines), tuple(dict.fromkeys(fix))[:MAX_LISTED + 1])


CHECKS: list[Callable[[Facts], Result]] = [
    check_firewall, check_sysctls, check_bridge_netfilter, check_rp_filter, check_mtu, check_bridges,
    check_bridge_ports, check_orphans, check_reaper, check_store, check_conntrack, check_probes, check_dns,
]


def run(f: Facts) -> list[Result]:
    out = [c(f) for c in CHECKS]
    for c in f.cluster:
        out += check_cluster(c, f.state_dir)
    return out + list(f.extra)


def healthy(results: list[Result]) -> bool:
    return all(r.status != "fail" for r in results)

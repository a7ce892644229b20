"""An in-memory `Kernel` (dataplane/api.py) for tests without root: namespaces, links,
addresses, routes, Muslin's nft table and DOCKER-USER, with the kernel's rules that matter
to Muslin (EEXIST, ENODEV, a veth dies with its peer, a namespace takes its links along).

Any mutating call can be made to fail: `fail_at = N` fails the N-th mutating call (0-based,
counted from when it was set), `fail_on = {"create_veth", ...}` fails every call of those
methods. `snapshot()` returns everything as comparable plain data.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable

from muslin.firewall.antispoof import Guard
from muslin.firewall.services import ServiceChanges, SvcPort
from muslin.firewall.state import FirewallState
from muslin.firewall.compiler import owner_path, same_owner, sysctls_for
from muslin.model.errors import Conflict, NotFound, Unavailable
from muslin.model.kernel import LinkInfo, SandboxConfig, SandboxResult
from muslin.model.names import REAP_GROUP
from muslin.model.types import IPAddress, IPInterface, IPNetwork, Route

HOST = ""  # the host namespace's key
KINDS = {"bridge", "veth", "macvlan", "vxlan", "ifb"}


@dataclass
class FakeLink:
    index: int
    kind: str
    mac: str
    mtu: int = 1500
    master: str = ""
    up: bool = False
    alias: str = ""
    hairpin: bool = False
    promisc: bool = False
    group: int = 0
    addresses: set = field(default_factory=set)
    peer: tuple[str, str] | None = None  # (netns, name) of a veth's other end
    tbf: tuple[int, int] | None = None  # root tbf (rate, burst)
    redirect: str = ""  # ingress redirected to this ifb


class FakeKernel:
    def __init__(self, mtu: int = 1500, docker_chain: bool = False) -> None:
        self.namespaces: dict[str, dict[str, FakeLink]] = {HOST: {}}
        self.routes: dict[str, set[tuple[str, str, str]]] = {HOST: set()}
        self.table: tuple[str, FirewallState] | None = None
        self.docker_chain = docker_chain
        self.docker_rules: set[tuple[str, str]] = set()  # (owner, bridge)
        self.sysctl: dict[str, str] = {"/proc/sys/net/ipv4/ip_forward": "0",
                                       "/proc/sys/net/ipv6/conf/all/forwarding": "0"}
        self.host_route_list: list[IPNetwork] = []
        self.ports_taken: set[tuple[str, str, int]] = set()
        self.resolv: dict[str, str] = {}  # /etc/netns/NAME/resolv.conf
        self.counters: dict[str, dict[str, int]] = {}  # firewall_counters()
        self.protocols: set[str] = {"tcp", "udp"}  # protocol_supported(); no SCTP, as here
        self.services: dict[str, SvcPort] = {}  # service port chain -> what it holds
        self.service_vips: set[IPAddress] = set()
        self.service_local: set[IPAddress] = set()
        self.service_mark = False
        self.conntrack: list[tuple[str, str, int, str]] = []  # (protocol, vip, port, backend) of live flows
        self.default_link_mtu = mtu
        self.fail_at: int | None = None
        self.fail_on: set[str] = set()
        self.calls: list[str] = []
        self._count = 0
        self._index = itertools.count(2)
        self._mac = itertools.count(1)
        self.add_link(HOST, "lo", "loopback")

    # -- test helpers ---------------------------------------------------------------------
    def add_netns(self, path: str) -> str:
        self.namespaces.setdefault(path, {})
        self.routes.setdefault(path, set())
        self.add_link(path, "lo", "loopback")
        return path

    def add_link(self, ns: str, name: str, kind: str, **kw: Any) -> FakeLink:
        link = FakeLink(next(self._index), kind, kw.pop("mac", "") or self._new_mac(), **kw)
        self.namespaces[ns][name] = link
        return link

    def snapshot(self) -> dict[str, Any]:
        """Everything, as plain comparable data (link indexes left out: the kernel never
        reuses them, so a re-made link differs only there)."""
        nss = {}
        for ns, lks in self.namespaces.items():
            nss[ns] = {n: {k: (sorted(map(str, v)) if isinstance(v, set) else v)
                           for k, v in asdict(lk).items() if k != "index"} for n, lk in lks.items()}
        sysctl = {k: v for k, v in self.sysctl.items()
                  if self._sysctl_exists(k) and (v != "0" or k.count("/") < 7)}  # per-link ones default 0
        return copy.deepcopy({"namespaces": nss, "routes": {k: sorted(v) for k, v in self.routes.items()},
                              "table": self.table, "docker": sorted(self.docker_rules), "sysctl": sysctl,
                              "resolv": dict(self.resolv), "services": dict(sorted(self.services.items())),
                              "service_vips": sorted(map(str, self.service_vips)),
                              "service_local": sorted(map(str, self.service_local)),
                              "conntrack": sorted(self.conntrack)})

    def _sysctl_exists(self, path: str) -> bool:
        """A per-interface sysctl exists while its interface does (in the host)."""
        parts = path.split("/")
        if len(parts) > 6 and parts[5] == "conf" and parts[6] not in ("all", "default"):
            return parts[6] in self.namespaces[HOST]
        return True

    # -- faults ---------------------------------------------------------------------------
    def _mut(self, what: str, *args: Any) -> None:
        self.calls.append(f"{what}{args}")
        n, self._count = self._count, self._count + 1
        if what in self.fail_on or (self.fail_at is not None and n == self.fail_at):
            raise Unavailable(f"fake kernel: injected failure in {what} (call {n})")

    def arm(self, fail_at: int | None) -> None:
        """Fail the `fail_at`-th mutating call from now (None: none); `calls_since_armed` counts."""
        self.fail_at, self._count, self._armed = fail_at, 0, len(self.calls)

    @property
    def calls_since_armed(self) -> list[str]:
        return self.calls[getattr(self, "_armed", 0):]

    def _new_mac(self) -> str:
        n = next(self._mac)
        return "02:fa:" + ":".join(f"{b:02x}" for b in n.to_bytes(4, "big"))

    def _ns(self, path: str) -> dict[str, FakeLink]:
        if path not in self.namespaces:
            raise NotFound(f"network namespace {path} does not exist")
        return self.namespaces[path]

    def _info(self, ns: str, name: str, lk: FakeLink) -> LinkInfo:
        master = self.namespaces[ns][lk.master].index if lk.master in self.namespaces[ns] else 0
        return LinkInfo(lk.index, name, lk.mac, lk.mtu, master, lk.up, lk.kind if lk.kind != "loopback" else "",
                        lk.alias)

    def _link(self, name: str, ns: str = HOST) -> FakeLink:
        lk = self._ns(ns).get(name)
        if lk is None:
            raise NotFound(f"link {name} does not exist")
        return lk

    def _remove(self, ns: str, name: str) -> None:
        lk = self.namespaces[ns].pop(name)
        self.routes[ns] = {r for r in self.routes[ns] if r[2] != name}
        for other in self.namespaces[ns].values():
            if other.master == name:
                other.master = ""
        if lk.peer and lk.peer[0] in self.namespaces and lk.peer[1] in self.namespaces[lk.peer[0]]:
            self.namespaces[lk.peer[0]][lk.peer[1]].peer = None
            self._remove(*lk.peer)

    # -- links of the host --------------------------------------------------------------
    def link(self, name: str) -> LinkInfo | None:
        lk = self.namespaces[HOST].get(name)
        return None if lk is None else self._info(HOST, name, lk)

    def default_mtu(self) -> int:
        return self.default_link_mtu

    def create_bridge(self, name: str, mtu: int, mac: str, alias: str) -> None:
        self._mut("create_bridge", name)
        if name in self.namespaces[HOST]:
            raise Conflict(f"bridge {name}: already exists")
        self.add_link(HOST, name, "bridge", mac=mac, mtu=mtu or 1500, up=True, alias=alias)

    def set_link(self, name: str, mtu: int = 0, up: bool = True, promisc: bool | None = None) -> None:
        self._mut("set_link", name)
        lk = self._link(name)
        lk.up = up
        if mtu:
            lk.mtu = mtu
        if promisc is not None:
            lk.promisc = promisc

    def add_address(self, name: str, addr: IPInterface) -> bool:
        self._mut("add_address", name, str(addr))
        lk = self._link(name)
        if addr in lk.addresses:
            return False
        lk.addresses.add(addr)
        return True

    def remove_address(self, name: str, addr: IPInterface) -> None:
        self._mut("remove_address", name, str(addr))
        lk = self.namespaces[HOST].get(name)
        if lk is not None:
            lk.addresses.discard(addr)

    def delete_link(self, name: str) -> bool:
        self._mut("delete_link", name)
        if name not in self.namespaces[HOST]:
            return False
        self._remove(HOST, name)
        return True

    def create_veth(self, name: str, peer: str, peer_netns: str, mtu: int, peer_mac: str = "", bridge: str = "",
                    hairpin: bool = False, mac: str = "") -> LinkInfo:
        self._mut("create_veth", name, peer)
        target = self._ns(peer_netns)
        if bridge and self._link(bridge).kind != "bridge":
            raise Conflict(f"{bridge} is not a bridge")
        if name in self.namespaces[HOST] or peer in target or (not peer_netns and peer == name):
            raise Conflict(f"veth {name}: already exists")
        self.add_link(HOST, name, "veth", mtu=mtu, peer=(peer_netns, peer), master=bridge, up=bool(bridge),
                      hairpin=hairpin, mac=mac)
        self.add_link(peer_netns, peer, "veth", mtu=mtu, mac=peer_mac, peer=(HOST, name))
        return self._info(HOST, name, self.namespaces[HOST][name])

    def enslave(self, name: str, bridge: str, hairpin: bool = False) -> None:
        self._mut("enslave", name, bridge)
        lk, br = self._link(name), self._link(bridge)
        if br.kind != "bridge":
            raise Conflict(f"{bridge} is not a bridge")
        lk.master, lk.hairpin, lk.up = bridge, hairpin, True

    def set_hairpin(self, name: str, on: bool) -> None:
        self._mut("set_hairpin", name, on)
        self._link(name).hairpin = on

    def create_macvlan(self, name: str, parent: str, mode: str, netns: str, mtu: int, mac: str = "") -> None:
        self._mut("create_macvlan", name, parent)
        p = self._link(parent)
        target = self._ns(netns)
        if name in target:
            raise Conflict(f"macvlan {name} on {parent}: already exists")
        self.add_link(netns, name, "macvlan", mtu=mtu or p.mtu, mac=mac)

    def kind_supported(self, kind: str) -> bool:
        return kind in KINDS

    def retire_link(self, name: str) -> bool:
        self._mut("retire_link", name)
        lk = self.namespaces[HOST].get(name)
        if lk is None:
            return False
        lk.master, lk.up, lk.group = "", False, REAP_GROUP
        return True

    def reap_links(self) -> bool:
        self._mut("reap_links")
        gone = [n for n, lk in self.namespaces[HOST].items() if lk.group == REAP_GROUP]
        for n in gone:
            if n in self.namespaces[HOST]:
                self._remove(HOST, n)
        return bool(gone)

    def retired_links(self) -> list[str]:
        return sorted(n for n, lk in self.namespaces[HOST].items() if lk.group == REAP_GROUP)

    # -- traffic control of host links ------------------------------------------------------
    def create_ifb(self, name: str) -> None:
        self._mut("create_ifb", name)
        if name in self.namespaces[HOST]:
            raise Conflict(f"ifb {name}: already exists")
        self.add_link(HOST, name, "ifb", up=True)

    def tc_tbf(self, name: str, rate: int, burst: int) -> None:
        self._mut("tc_tbf", name)
        lk = self._link(name)
        if lk.tbf is not None:
            raise Conflict(f"tbf on {name}: already exists")
        lk.tbf = (rate, burst)

    def tc_redirect(self, name: str, ifb: str) -> None:
        self._mut("tc_redirect", name, ifb)
        lk = self._link(name)
        if self._link(ifb).kind != "ifb":
            raise Conflict(f"{ifb} is not an ifb")
        if lk.redirect:
            raise Conflict(f"redirect of {name}: already exists")
        lk.redirect = ifb

    def tc_clear(self, name: str) -> bool:
        self._mut("tc_clear", name)
        lk = self.namespaces[HOST].get(name)
        if lk is None or (lk.tbf is None and not lk.redirect):
            return False
        lk.tbf, lk.redirect = None, ""
        return True

    def tc_limits(self, name: str) -> tuple[int, str]:
        lk = self.namespaces[HOST].get(name)
        if lk is None:
            return 0, ""
        return (lk.tbf[0] if lk.tbf else 0), lk.redirect

    # -- network namespaces -------------------------------------------------------------
    def netns_exists(self, path: str) -> bool:
        return bool(path) and path in self.namespaces

    def same_netns(self, a: str, b: str) -> bool:
        return a == b and a in self.namespaces

    def create_netns(self, name: str) -> str:
        self._mut("create_netns", name)
        path = f"/run/netns/{name}"
        if path in self.namespaces:
            raise Conflict(f"network namespace {name} already exists")
        lo = self.add_netns(path)
        self.namespaces[lo]["lo"].up = True
        return path

    def delete_netns(self, name: str) -> bool:
        self._mut("delete_netns", name)
        path = f"/run/netns/{name}"
        if path not in self.namespaces:
            return False
        for link in list(self.namespaces[path]):
            if link in self.namespaces[path]:
                self._remove(path, link)
        del self.namespaces[path], self.routes[path]
        return True

    def netns_resolv_conf(self, name: str, text: str | None) -> str | None:
        self._mut("netns_resolv_conf", name)
        old = self.resolv.get(name)
        if text is None:
            self.resolv.pop(name, None)
        else:
            self.resolv[name] = text
        return old

    def sandbox_links(self, netns: str) -> list[str]:
        return sorted(self._ns(netns))

    def sandbox_setup(self, netns: str, cfg: SandboxConfig) -> SandboxResult:
        self._mut("sandbox_setup", netns, cfg.ifname)
        lk = self._link(cfg.ifname, netns)
        if cfg.mac:
            lk.mac = cfg.mac
        if cfg.mtu:
            lk.mtu = cfg.mtu
        for a in cfg.addresses:
            if a in lk.addresses:
                raise Conflict(f"sandbox interface {cfg.ifname}: address {a} already exists")
        lk.addresses.update(cfg.addresses)
        lk.up = True
        installed = []
        for r in cfg.routes:
            entry = (str(r.dst), str(r.gw or ""), cfg.ifname)
            same_dst = {x for x in self.routes[netns] if x[0] == entry[0]}
            if same_dst and r.dst.prefixlen == 0 and not cfg.replace_default:
                continue  # the sandbox keeps its default route
            self.routes[netns] = (self.routes[netns] - same_dst) | {entry}
            installed.append(Route(r.dst, r.gw))
        return SandboxResult(lk.mac, tuple(installed))

    def sandbox_delete_link(self, netns: str, ifname: str) -> bool:
        self._mut("sandbox_delete_link", netns, ifname)
        if netns not in self.namespaces or ifname not in self.namespaces[netns]:
            return False
        self._remove(netns, ifname)
        return True

    def sandbox_describe(self, netns: str, ifname: str) -> dict:
        lk = self._ns(netns).get(ifname)
        if lk is None:
            return {}
        return {"mac": lk.mac, "mtu": lk.mtu, "up": lk.up, "addresses": [str(a) for a in lk.addresses]}

    def sandbox_set_loopback(self, netns: str, up: bool) -> bool:
        self._mut("sandbox_set_loopback", netns, up)
        lo = self._link("lo", netns)
        was, lo.up = lo.up, up
        return was

    def sandbox_addresses(self, netns: str) -> list[IPInterface]:
        return sorted((a for lk in self._ns(netns).values() for a in lk.addresses), key=str)

    # -- firewall -------------------------------------------------------------------------
    def firewall_owner(self) -> str | None:
        return None if self.table is None else self.table[0]

    def firewall_sync(self, state: FirewallState, owner: str) -> dict[str, str]:
        self._mut("firewall_sync", owner)
        if self.table is not None and self.table[0] and not same_owner(self.table[0], owner):
            raise Conflict(f"this host namespace is managed by Muslin with state dir {owner_path(self.table[0])}")
        if state.empty:
            self.table = None
            self.services, self.service_vips, self.service_local, self.service_mark = {}, set(), set(), False
            return {}
        self.table = (owner, _sorted_guards(state))
        changed = {}
        for path, value in sysctls_for(state).items():
            if not self._sysctl_exists(path):
                continue  # as the real one: a bridge that is not there (yet) is skipped
            old = self.sysctl.get(path, "0")
            if old != value:
                changed[path], self.sysctl[path] = old, value
        return changed

    def restore_sysctls(self, previous: dict[str, str]) -> None:
        self._mut("restore_sysctls")
        self.sysctl.update({k: v for k, v in previous.items() if self._sysctl_exists(k)})

    def docker_user(self, owner: str, bridges: Iterable[str], only: Iterable[str] | None = None) -> None:
        self._mut("docker_user", owner)
        if not self.docker_chain:
            return
        scope = None if only is None else set(only)
        keep = {(o, b) for o, b in self.docker_rules if o != owner or (scope is not None and b not in scope)}
        self.docker_rules = keep | {(owner, b) for b in bridges}

    # -- anti-spoofing and network policy --------------------------------------------------
    def firewall_guard(self, add: Iterable[Guard], remove: Iterable[Guard]) -> None:
        self._mut("firewall_guard")
        if self.table is None:
            raise NotFound("nftables: table bridge muslin does not exist")
        gone = {g.ifname for g in remove}
        owner, state = self.table
        guards = tuple(g for g in state.guards if g.ifname not in gone) + tuple(add)
        self.table = (owner, _sorted_guards(replace(state, guards=guards)))

    def firewall_counters(self) -> dict[str, dict[str, int]]:
        return {name: dict(v) for name, v in self.counters.items()}

    def protocol_supported(self, protocol: str) -> bool:
        return protocol in self.protocols

    # -- services -------------------------------------------------------------------------
    def _services_owner(self, owner: str) -> None:
        if self.table is None:
            raise NotFound("there is no nftables table inet muslin here: services need a Muslin network in this "
                           "host namespace")
        if self.table[0] and not same_owner(self.table[0], owner):
            raise Conflict(f"this host namespace is managed by Muslin with state dir {owner_path(self.table[0])}")

    def services_apply(self, changes: ServiceChanges, owner: str) -> None:
        self._mut("services_apply", owner)
        self._services_owner(owner)
        for old, new in changes.ports:
            if new is not None:
                self.services[new.chain] = new
            elif old is not None:
                self.services.pop(old.chain, None)
        for a, present in changes.vips:
            (self.service_vips.add if present else self.service_vips.discard)(a)
        for a, present in changes.local:
            (self.service_local.add if present else self.service_local.discard)(a)

    def services_resync(self, ports: Iterable[SvcPort], vips: Iterable[IPAddress], local: Iterable[IPAddress],
                        owner: str) -> None:
        self._mut("services_resync", owner)
        self._services_owner(owner)
        self.services = {p.chain: p for p in ports}
        self.service_vips, self.service_local, self.service_mark = set(vips), set(local), True

    def services_marked(self) -> bool:
        return self.table is not None and self.service_mark

    def conntrack_flush(self, protocol: str, vip: IPAddress, port: int, backend: IPAddress) -> int:
        self._mut("conntrack_flush", protocol, str(vip), port, str(backend))
        gone = [c for c in self.conntrack if c == (protocol, str(vip), port, str(backend))]
        self.conntrack = [c for c in self.conntrack if c not in gone]
        return len(gone)

    # -- host facts -----------------------------------------------------------------------
    def host_routes(self) -> list[IPNetwork]:
        return list(self.host_route_list)

    def port_free(self, protocol: str, host_ip: str, port: int) -> bool:
        return (protocol, host_ip, port) not in self.ports_taken

    def close(self) -> None:
        return None


def _sorted_guards(state: FirewallState) -> FirewallState:
    """Guards in one order (as the kernel's sets have none)."""
    return replace(state, guards=tuple(sorted(state.guards, key=lambda g: g.ifname)))

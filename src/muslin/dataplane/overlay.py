"""The multi-host agent's kernel edge: observe and change what a cluster network's backend
put on this host (routes, FDB and neighbour entries, a VXLAN or WireGuard device and its
peers, an nft table of its own), in the current namespace (the agent runs inside the host
it manages). Only objects the agent owns are observed: routes with protocol RTPROT_MUSLIN,
and the devices and nft tables the backend names (model.kernel.Owned). Knows no backend:
it speaks the specs of model/kernel.py."""

from __future__ import annotations

import errno
import ipaddress
import json
import shutil
import socket
import subprocess

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from muslin.dataplane import wireguard
from muslin.model.errors import Invalid, NotFound, Unavailable, Unsupported
from muslin.model.kernel import (RTPROT_MUSLIN, Changes, Device, EgressGuard, FdbSpec, NeighSpec, Observed, Owned,
                                 RouteSpec, VxlanDev, WgDev, WgPeer)

RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
AF_BRIDGE = 7


def _attr(msg, name, default=None):
    v = msg.get_attr(name)
    return default if v is None else v


class Overlay:
    def __init__(self) -> None:
        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    # -- facts about the host -----------------------------------------------------------
    def index(self, name: str) -> int | None:
        r = self.ipr.link_lookup(ifname=name)
        return r[0] if r else None

    def name(self, index: int) -> str:
        try:
            return _attr(self.ipr.get_links(index)[0], "IFLA_IFNAME", "")
        except NetlinkError:
            return ""

    def underlay(self, dev: str = "", ip: str = "") -> tuple[str, str, str, int]:
        """(device, address, connected subnet, mtu) of the underlay: the given device,
        the device holding the given address, or the device of the default route."""
        if not dev and not ip:
            for r in self.ipr.get_routes(family=socket.AF_INET, table=254):
                if r["dst_len"] == 0 and r.get_attr("RTA_OIF"):
                    dev = self.name(r.get_attr("RTA_OIF"))
                    break
        for a in self.ipr.get_addr(family=socket.AF_INET):
            if a["scope"] != 0:
                continue
            name = self.name(a["index"])
            addr = _attr(a, "IFA_ADDRESS", "")
            if (dev and name == dev) or (ip and addr == ip) or (not dev and not ip and name != "lo"):
                iface = ipaddress.ip_interface(f"{addr}/{a['prefixlen']}")
                mtu = _attr(self.ipr.get_links(a["index"])[0], "IFLA_MTU", 1500)
                return name, addr, str(iface.network), mtu
        what = f"device {dev}" if dev else f"address {ip}" if ip else "a default route"
        raise NotFound(f"underlay: no IPv4 address found for {what} in this namespace")

    # -- observe -------------------------------------------------------------------------
    def observe(self, owned: Owned) -> Observed:
        routes = set()
        for r in self.ipr.get_routes(family=socket.AF_INET, table=254):
            if r["proto"] != RTPROT_MUSLIN:
                continue
            dst = f"{_attr(r, 'RTA_DST', '0.0.0.0')}/{r['dst_len']}"
            routes.add(RouteSpec(dst, _attr(r, "RTA_GATEWAY", ""), self.name(_attr(r, "RTA_OIF", 0)),
                                 bool(r["flags"] & RTNH_F_ONLINK)))
        devices: list[Device] = []
        neighs: set[NeighSpec] = set()
        fdb: set[FdbSpec] = set()
        peers: set[WgPeer] = set()
        for name in owned.devices:
            idx = self.index(name)
            if idx is None:
                continue
            link = self.ipr.get_links(idx)[0]
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
            if kind == "vxlan":
                devices.append(self._vxlan(name, idx, link, info))
                neighs |= self._neighs(name, idx)
                fdb |= self._fdb(name, idx)
            elif kind in ("wireguard", "tun"):
                shown = wireguard.show(name)
                if shown is None:
                    raise Invalid(f"link {name} exists but is not a WireGuard interface; remove it")
                devices.append(WgDev(name, shown.port, _attr(link, "IFLA_MTU", 0), shown.public_key,
                                     userspace=kind == "tun"))
                peers |= set(shown.peers)
            else:
                raise Invalid(f"link {name} exists but is not a VXLAN or WireGuard device; "
                              f"remove it or rename the network")
        guards = tuple(g for g in (observe_guard(t) for t in owned.guards) if g is not None)
        return Observed(frozenset(routes), frozenset(neighs), frozenset(fdb), tuple(devices), frozenset(peers), guards)

    def _vxlan(self, name: str, idx: int, link, info) -> VxlanDev:
        data = info.get_attr("IFLA_INFO_DATA")
        addrs = [f"{_attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}" for a in self.ipr.get_addr(index=idx, family=socket.AF_INET)]
        return VxlanDev(name, _attr(data, "IFLA_VXLAN_ID", 0), _attr(data, "IFLA_VXLAN_LOCAL", ""),
                        _attr(data, "IFLA_VXLAN_PORT", 0), self.name(_attr(data, "IFLA_VXLAN_LINK", 0)),
                        _attr(link, "IFLA_MTU", 0), _attr(link, "IFLA_ADDRESS", ""),
                        addrs[0] if len(addrs) == 1 else ",".join(addrs))

    def _neighs(self, name: str, idx: int) -> set[NeighSpec]:
        out = set()
        for n in self.ipr.get_neighbours(family=socket.AF_INET, ifindex=idx):
            if n["state"] & NUD_PERMANENT and n.get_attr("NDA_LLADDR"):
                out.add(NeighSpec(name, n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR").lower()))
        return out

    def _fdb(self, name: str, idx: int) -> set[FdbSpec]:
        out = set()
        for n in self.ipr.get_neighbours(family=AF_BRIDGE, ifindex=idx):
            if n["ifindex"] == idx and n.get_attr("NDA_DST") and n.get_attr("NDA_LLADDR"):
                out.add(FdbSpec(name, n.get_attr("NDA_LLADDR").lower(), n.get_attr("NDA_DST")))
        return out

    # -- apply ---------------------------------------------------------------------------
    def apply(self, ch: Changes) -> None:
        try:
            self._apply(ch)
        except NetlinkError as e:
            raise Unavailable(f"kernel refused a change ({ch.summary()}): {e.args[1] if len(e.args) > 1 else e}") from None

    def _apply(self, ch: Changes) -> None:
        for g in ch.set_guards:  # first: nothing may leave in the clear while the rest changes
            set_guard(g)
        for r in ch.del_routes:
            self._ignore(errno.ESRCH, self.ipr.route, "del", **self._route(r))
        for name in ch.delete_devices:
            self.delete_device(name)
        for d in ch.create_devices:
            self.create_device(d)
        for d in ch.update_devices:
            self.update_device(d)
        for n in ch.del_neighs:
            self._ignore(errno.ENOENT, self.ipr.neigh, "del", dst=n.ip, lladdr=n.mac, ifindex=self._idx(n.dev))
        for f in ch.del_fdb:
            self._ignore(errno.ENOENT, self.ipr.fdb, "del", ifindex=self._idx(f.dev), lladdr=f.mac, dst=f.dst)
        for f in ch.add_fdb:
            self._ignore(errno.EEXIST, self.ipr.fdb, "append", ifindex=self._idx(f.dev), lladdr=f.mac, dst=f.dst)
        for n in ch.add_neighs:
            self.ipr.neigh("replace", dst=n.ip, lladdr=n.mac, ifindex=self._idx(n.dev), state=NUD_PERMANENT)
        for dev in sorted({p.dev for p in ch.del_peers + ch.set_peers}):
            wireguard.set_peers(dev, [p.public_key for p in ch.del_peers if p.dev == dev],
                                [p for p in ch.set_peers if p.dev == dev])
        for r in ch.add_routes:
            self.ipr.route("replace", **self._route(r))
        for t in ch.delete_guards:
            delete_guard(t)

    def create_device(self, d: Device) -> None:
        if isinstance(d, VxlanDev):
            self.create_vxlan(d)
        else:
            wireguard.create(d)
            self.update_device(d, configured=True)

    def update_device(self, d: Device, configured: bool = False) -> None:
        if isinstance(d, VxlanDev):
            self.update_vxlan(d)
            return
        if not configured:
            wireguard.configure(d)
        idx = self._idx(d.name)
        self.ipr.link("set", index=idx, mtu=d.mtu)
        self.ipr.link("set", index=idx, state="up")

    def delete_device(self, name: str) -> None:
        idx = self.index(name)
        if idx is not None:
            link = self.ipr.get_links(idx)[0]
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
            if kind in ("wireguard", "tun"):
                wireguard.delete(name)
                return
            self.ipr.link("del", index=idx)

    def _idx(self, dev: str) -> int:
        idx = self.index(dev)
        if idx is None:
            raise NotFound(f"link {dev} does not exist")
        return idx

    def _route(self, r: RouteSpec) -> dict:
        kw = dict(dst=r.dst, oif=self._idx(r.dev), proto=RTPROT_MUSLIN, table=254)
        if r.gateway:
            kw["gateway"] = r.gateway
        else:
            kw["scope"] = 253  # link: a device route
        if r.onlink:
            kw["flags"] = RTNH_F_ONLINK
        return kw

    @staticmethod
    def _ignore(code: int, fn, *a, **kw) -> None:
        try:
            fn(*a, **kw)
        except NetlinkError as e:
            if e.code != code:
                raise

    def create_vxlan(self, v: VxlanDev) -> None:
        under = self._idx(v.underlay_dev)
        try:
            self.ipr.link("add", ifname=v.name, kind="vxlan", vxlan_id=v.vni, vxlan_local=v.local,
                          vxlan_port=v.port, vxlan_link=under, vxlan_learning=0, address=v.mac, mtu=v.mtu)
        except NetlinkError as e:
            if e.code in (errno.EOPNOTSUPP, errno.ENOTSUP) or "not supported" in str(e).lower():
                raise Unsupported("vxlan: kernel module vxlan is not available") from None
            raise
        self.update_vxlan(v)

    def update_vxlan(self, v: VxlanDev) -> None:
        idx = self._idx(v.name)
        self.ipr.link("set", index=idx, mtu=v.mtu, address=v.mac)
        iface = ipaddress.ip_interface(v.address)
        for a in self.ipr.get_addr(index=idx, family=socket.AF_INET):
            if f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" != v.address:
                self.ipr.addr("del", index=idx, address=a.get_attr("IFA_ADDRESS"), prefixlen=a["prefixlen"])
        self._ignore(errno.EEXIST, self.ipr.addr, "add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        self.ipr.link("set", index=idx, state="up")


# -- egress guards: an nft table of the agent's own per guard ------------------------------

GUARD_TAG = "muslin-guard"


def _guard_rule(g: EgressGuard) -> str:
    return (f"ip saddr {g.src} ip daddr {g.dst} ip daddr != {g.src} oifname != \"{g.via}\" counter drop "
            f"comment \"{GUARD_TAG} {g.src} {g.dst} {g.via}\"")


def guard_script(g: EgressGuard) -> str:
    """One atomic nft batch that (re)makes the guard's table: forwarded traffic and the
    host's own, before any accept of other tables matters (a drop in any base chain wins)."""
    for name, v in (("table", g.table), ("interface", g.via)):
        if not v or any(c in v for c in "\"\\ ;{}\n"):
            raise Invalid(f"egress guard: bad {name} name {v!r}")
    for net in (g.src, g.dst):
        ipaddress.ip_network(net)
    rule = _guard_rule(g)
    return (f"table inet {g.table} {{}}\ndelete table inet {g.table}\ntable inet {g.table} {{\n"
            f"  chain forward {{ type filter hook forward priority filter - 10; policy accept; {rule}; }}\n"
            f"  chain output {{ type filter hook output priority filter - 10; policy accept; {rule}; }}\n}}\n")


def _nft(args: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        return subprocess.run([nft, *args], input=input, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"nftables: cannot run nft: {e}") from None


def observe_guard(table: str) -> EgressGuard | None:
    r = _nft(["-j", "list", "table", "inet", table])
    if r.returncode != 0:
        if "No such file or directory" in r.stderr:
            return None
        raise Unavailable(f"nftables: list table inet {table}: {r.stderr.strip()}")
    try:
        items = json.loads(r.stdout)["nftables"]
    except (ValueError, KeyError) as e:
        raise Unavailable(f"nftables: cannot read table inet {table}: {e}") from None
    rules = {}
    for it in items:
        rule = it.get("rule")
        if rule:
            rules.setdefault(rule.get("chain"), []).append(str(rule.get("comment", "")))
    mark = {tuple(c) for c in rules.values()}
    if sorted(rules) == ["forward", "output"] and len(mark) == 1:
        (comments,) = mark
        parts = comments[0].split() if len(comments) == 1 else []
        if len(parts) == 4 and parts[0] == GUARD_TAG:
            return EgressGuard(table, parts[1], parts[2], parts[3])
    return EgressGuard(table, "", "", "")  # not as we make it: it is made again


def set_guard(g: EgressGuard) -> None:
    r = _nft(["-f", "-"], input=guard_script(g))
    if r.returncode != 0:
        raise Unavailable(f"nftables: table inet {g.table}: {r.stderr.strip().splitlines()[-1:] or ['failed']}")


def delete_guard(table: str) -> None:
    r = _nft(["delete", "table", "inet", table])
    if r.returncode != 0 and "No such file or directory" not in r.stderr:
        raise Unavailable(f"nftables: delete table inet {table}: {r.stderr.strip()}")

"""The multi-host agent's kernel edge: observe and change what a cluster network's backend
put on this host (routes, FDB and neighbour entries, a VXLAN or WireGuard device and its
peers, an nft table of its own), in the current namespace (the agent runs inside the host
it manages). Only objects the agent owns are observed: routes with protocol RTPROT_MUSLIN,
and the devices and nft tables the backend names (model.kernel.Owned). Knows no backend:
it speaks the specs of model/kernel.py.

Netlink through dataplane/rtnl.py (the standard library only: no pyroute2 to import at
start), on a socket with strict checking, so the kernel filters the dumps: routes by table
and protocol, neighbours and FDB entries by device. The route, neighbour and FDB changes of
one apply() go to the kernel in one batch (one sendmsg)."""

from __future__ import annotations

import errno
import ipaddress
import json
import shutil
import socket
import struct
import subprocess

from muslin.dataplane import rtnl, wireguard
from muslin.dataplane.links import read_sysctl, write_sysctl
from muslin.dataplane.rtnl import NetlinkError, Request
from muslin.model.errors import Invalid, NotFound, Unavailable, Unsupported
from muslin.model.kernel import (RTPROT_MUSLIN, Changes, Device, EgressGuard, FdbSpec, NeighSpec, Observed, Owned,
                                 RouteSpec, VxlanDev, WgDev, WgPeer)

RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
F_APPEND = 0x800
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 1, 3, 4, 7, 15
IFLA_VXLAN_LOCAL6 = 17
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTN_UNICAST, MAIN = 0, 253, 1, 254

_NDM = struct.Struct("=BBHiHBB")
_RTM = struct.Struct("=BBBBBBBBI")
_IFA = struct.Struct("=BBBBI")
_U32 = struct.Struct("=I")


def _u32(b: bytes) -> int:
    return _U32.unpack_from(b)[0]


def _ip(b: bytes) -> str:
    """An address attribute of either family (4 or 16 bytes)."""
    return str(ipaddress.IPv6Address(b[:16]) if len(b) >= 16 else ipaddress.IPv4Address(b[:4]))


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


class Overlay:
    def __init__(self) -> None:
        self.nl = rtnl.Socket()
        try:  # the kernel filters dumps by what the request names
            self.nl.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        except OSError:
            pass
        self._names: dict[int, str] = {}
        self._indexes: dict[str, int] = {}  # within one apply(): name -> ifindex

    def close(self) -> None:
        self.nl.close()

    # -- facts about the host -----------------------------------------------------------
    def index(self, name: str) -> int | None:
        link = self.nl.link(name)
        return link.index if link is not None else None

    def name(self, index: int) -> str:
        if not index:
            return ""
        link = self.nl.link_by_index(index)
        return link.name if link is not None else ""

    def underlay(self, dev: str = "", ip: str = "") -> tuple[str, str, str, int]:
        """(device, address, connected subnet, mtu) of the underlay: the given device,
        the device holding the given address, or the device of the default route."""
        if not dev and not ip:
            oif = self.nl.default_oif(socket.AF_INET)
            dev = self.name(oif) if oif else ""
        for idx, text in self.nl.addresses():
            iface = ipaddress.ip_interface(text)
            if iface.version != 4:
                continue
            link = self.nl.link_by_index(idx)
            if link is None:
                continue
            if (dev and link.name == dev) or (ip and str(iface.ip) == ip) or (not dev and not ip and link.name != "lo"):
                return link.name, str(iface.ip), str(iface.network), link.mtu or 1500
        what = f"device {dev}" if dev else f"address {ip}" if ip else "a default route"
        raise NotFound(f"underlay: no IPv4 address found for {what} in this namespace")

    def underlay6(self, dev: str, ip: str = "") -> tuple[str, str]:
        """(address, connected subnet) of the underlay's IPv6 side: the given address, else
        the device's first global IPv6 address; ("", "") when it has none."""
        idx = self.index(dev) if dev else None
        for _i, text in self.nl.addresses(idx or 0):
            iface = ipaddress.ip_interface(text)
            if iface.version != 6 or iface.ip.is_link_local or (ip and str(iface.ip) != ip):
                continue
            return str(iface.ip), str(iface.network)
        if ip:
            raise NotFound(f"underlay: no IPv6 address {ip} in this namespace")
        return "", ""

    # -- observe -------------------------------------------------------------------------
    def observe(self, owned: Owned) -> Observed:
        self._names = {}
        routes = set()
        for fam, zero in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            body = _RTM.pack(fam, 0, 0, 0, MAIN, RTPROT_MUSLIN, 0, 0, 0)
            for p in self.nl.one(rtnl.RTM_GETROUTE, rtnl.F_DUMP, body):
                f, dst_len, _s, _t, table, proto, _sc, _ty, flags = _RTM.unpack_from(p)
                if proto != RTPROT_MUSLIN or table != MAIN or f != fam:  # (a kernel without strict dumps sends all)
                    continue
                a = dict(rtnl.attrs(p, _RTM.size))
                if rtnl.RTA_TABLE in a and _u32(a[rtnl.RTA_TABLE]) != MAIN:
                    continue
                dst = f"{_ip(a[rtnl.RTA_DST]) if rtnl.RTA_DST in a else zero}/{dst_len}"
                gw = _ip(a[rtnl.RTA_GATEWAY]) if rtnl.RTA_GATEWAY in a else ""
                routes.add(RouteSpec(dst, gw, self._name(_u32(a[rtnl.RTA_OIF]) if rtnl.RTA_OIF in a else 0),
                                     bool(flags & RTNH_F_ONLINK)))
        devices: list[Device] = []
        neighs: set[NeighSpec] = set()
        fdb: set[FdbSpec] = set()
        peers: set[WgPeer] = set()
        for name in owned.devices:
            link = self._link_msg(name)
            if link is None:
                continue
            idx, attrs = link
            info = dict(rtnl.attrs(attrs[rtnl.IFLA_LINKINFO])) if rtnl.IFLA_LINKINFO in attrs else {}
            kind = info.get(rtnl.IFLA_INFO_KIND, b"").split(b"\0", 1)[0].decode()
            if kind == "vxlan":
                devices.append(self._vxlan(name, idx, attrs, dict(rtnl.attrs(info.get(rtnl.IFLA_INFO_DATA, b"")))))
                neighs |= self._neighs(name, idx)
                fdb |= self._fdb(name, idx)
            elif kind in ("wireguard", "tun"):
                shown = wireguard.show(name)
                if shown is None:
                    raise Invalid(f"link {name} exists but is not a WireGuard interface; remove it")
                mtu = _u32(attrs[rtnl.IFLA_MTU]) if rtnl.IFLA_MTU in attrs else 0
                devices.append(WgDev(name, shown.port, mtu, shown.public_key, userspace=kind == "tun"))
                peers |= set(shown.peers)
            else:
                raise Invalid(f"link {name} exists but is not a VXLAN or WireGuard device; "
                              f"remove it or rename the network")
        guards = tuple(g for g in (observe_guard(t) for t in owned.guards) if g is not None)
        return Observed(frozenset(routes), frozenset(neighs), frozenset(fdb), tuple(devices), frozenset(peers), guards)

    def _name(self, index: int) -> str:
        if index not in self._names:
            self._names[index] = self.name(index)
        return self._names[index]

    def _link_msg(self, name: str) -> tuple[int, dict[int, bytes]] | None:
        try:
            got = self.nl.one(rtnl.RTM_GETLINK, 0, rtnl.ifinfo() + rtnl.string(rtnl.IFLA_IFNAME, name))
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        if not got:
            return None
        index = struct.unpack_from("=BxHiII", got[0])[2]
        return index, dict(rtnl.attrs(got[0], 16))

    def _vxlan(self, name: str, idx: int, link: dict[int, bytes], data: dict[int, bytes]) -> VxlanDev:
        addrs = [text for i, text in self.nl.addresses(idx) if i == idx and ":" not in text]
        raw = data.get(IFLA_VXLAN_LOCAL6) or data.get(IFLA_VXLAN_LOCAL)
        local = _ip(raw) if raw else ""
        return VxlanDev(name, _u32(data[IFLA_VXLAN_ID]) if IFLA_VXLAN_ID in data else 0,
                        local,
                        struct.unpack("!H", data[IFLA_VXLAN_PORT][:2])[0] if IFLA_VXLAN_PORT in data else 0,
                        self._name(_u32(data[IFLA_VXLAN_LINK])) if IFLA_VXLAN_LINK in data else "",
                        _u32(link[rtnl.IFLA_MTU]) if rtnl.IFLA_MTU in link else 0,
                        _mac(link.get(rtnl.IFLA_ADDRESS, b"")),
                        addrs[0] if len(addrs) == 1 else ",".join(addrs), ipv6=ipv6_on(name))

    def _dump_neigh(self, family: int, idx: int) -> list[tuple[int, int, dict[int, bytes]]]:
        """(ifindex, state, attributes) of the device's neighbours (family AF_INET) or FDB
        entries (AF_BRIDGE), filtered by the kernel (and here, for older kernels)."""
        if family == AF_BRIDGE:  # strict: the header's ifindex names the device
            body = _NDM.pack(family, 0, 0, idx, 0, 0, 0)
        else:
            body = _NDM.pack(family, 0, 0, 0, 0, 0, 0) + rtnl.u32(NDA_IFINDEX, idx)
        out = []
        for p in self.nl.one(RTM_GETNEIGH, rtnl.F_DUMP, body):
            _fam, _p1, _p2, ifindex, state, _fl, _ty = _NDM.unpack_from(p)
            if ifindex == idx:
                out.append((ifindex, state, dict(rtnl.attrs(p, _NDM.size))))
        return out

    def _neighs(self, name: str, idx: int) -> set[NeighSpec]:
        return {NeighSpec(name, _ip(a[NDA_DST]), _mac(a[NDA_LLADDR]))
                for fam, size in ((socket.AF_INET, 4), (socket.AF_INET6, 16))
                for _i, state, a in self._dump_neigh(fam, idx)
                if state & NUD_PERMANENT and a.get(NDA_LLADDR) and len(a.get(NDA_DST, b"")) == size}

    def _fdb(self, name: str, idx: int) -> set[FdbSpec]:
        return {FdbSpec(name, _mac(a[NDA_LLADDR]), _ip(a[NDA_DST]))
                for _i, _state, a in self._dump_neigh(AF_BRIDGE, idx)
                if a.get(NDA_LLADDR) and len(a.get(NDA_DST, b"")) in (4, 16)}

    # -- apply ---------------------------------------------------------------------------
    def apply(self, ch: Changes) -> None:
        self._indexes = {}
        try:
            self._apply(ch)
        except NetlinkError as e:
            raise Unavailable(f"kernel refused a change ({ch.summary()}): {e.strerror or e}") from None

    def _batch(self, reqs: list[tuple[Request, int]]) -> None:
        """One sendmsg; each request's errno that it may ignore (0: none)."""
        if not reqs:
            return
        for (_req, ok), (_payloads, err) in zip(reqs, self.nl.batch_results([r for r, _ in reqs])):
            if err and err != ok:
                raise NetlinkError(err, errno.errorcode.get(err, str(err)))

    def _apply(self, ch: Changes) -> None:
        for g in ch.set_guards:  # first: nothing may leave in the clear while the rest changes
            set_guard(g)
        self._batch([(self._route(r, delete=True), errno.ESRCH) for r in ch.del_routes])
        for name in ch.delete_devices:
            self.delete_device(name)
        for d in ch.create_devices:
            self.create_device(d)
        for d in ch.update_devices:
            self.update_device(d)
        self._indexes = {}  # devices made again have new indexes
        reqs = [(self._neigh(_family(n.ip), n.dev, n.ip, n.mac, RTM_DELNEIGH), errno.ENOENT) for n in ch.del_neighs]
        reqs += [(self._neigh(AF_BRIDGE, f.dev, f.dst, f.mac, RTM_DELNEIGH), errno.ENOENT) for f in ch.del_fdb]
        reqs += [(self._neigh(AF_BRIDGE, f.dev, f.dst, f.mac, RTM_NEWNEIGH), errno.EEXIST) for f in ch.add_fdb]
        reqs += [(self._neigh(_family(n.ip), n.dev, n.ip, n.mac, RTM_NEWNEIGH), 0) for n in ch.add_neighs]
        self._batch(reqs)
        for dev in sorted({p.dev for p in ch.del_peers + ch.set_peers}):
            wireguard.set_peers(dev, [p.public_key for p in ch.del_peers if p.dev == dev],
                                [p for p in ch.set_peers if p.dev == dev])
        self._batch([(self._route(r), 0) for r in ch.add_routes])
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
        self.nl.one(*self._set_link(self._idx(d.name), up=True, mtu=d.mtu))

    def delete_device(self, name: str) -> None:
        link = self._link_msg(name)
        if link is None:
            return
        idx, attrs = link
        info = dict(rtnl.attrs(attrs[rtnl.IFLA_LINKINFO])) if rtnl.IFLA_LINKINFO in attrs else {}
        if info.get(rtnl.IFLA_INFO_KIND, b"").split(b"\0", 1)[0] in (b"wireguard", b"tun"):
            wireguard.delete(name)
            return
        self.nl.delete_link(idx)

    def _idx(self, dev: str) -> int:
        idx = self._indexes.get(dev) or self.index(dev)
        if idx is None:
            raise NotFound(f"link {dev} does not exist")
        self._indexes[dev] = idx
        return idx

    def _route(self, r: RouteSpec, delete: bool = False) -> Request:
        dst = ipaddress.ip_network(r.dst)
        v6 = dst.version == 6
        scope = RT_SCOPE_UNIVERSE if r.gateway or v6 else RT_SCOPE_LINK
        body = _RTM.pack(socket.AF_INET6 if v6 else socket.AF_INET, dst.prefixlen, 0, 0, MAIN, RTPROT_MUSLIN, scope,
                         RTN_UNICAST, RTNH_F_ONLINK if r.onlink else 0)
        body += rtnl.ip(rtnl.RTA_DST, dst.network_address) if dst.prefixlen else b""
        body += rtnl.u32(rtnl.RTA_OIF, self._idx(r.dev))
        body += rtnl.ip(rtnl.RTA_GATEWAY, ipaddress.ip_address(r.gateway)) if r.gateway else b""
        if delete:
            return Request(rtnl.RTM_DELROUTE, 0, body)
        return Request(rtnl.RTM_NEWROUTE, rtnl.F_CREATE | rtnl.F_REPLACE, body)

    def _neigh(self, family: int, dev: str, ip: str, mac: str, kind: int) -> Request:
        bridge = family == AF_BRIDGE
        body = _NDM.pack(family, 0, 0, self._idx(dev), NUD_PERMANENT, NTF_SELF if bridge else 0, 0)
        body += rtnl.ip(NDA_DST, ipaddress.ip_address(ip)) + rtnl.mac(NDA_LLADDR, mac)
        if kind == RTM_DELNEIGH:
            return Request(kind, 0, body)
        return Request(kind, rtnl.F_CREATE | (F_APPEND if bridge else rtnl.F_REPLACE), body)

    @staticmethod
    def _set_link(index: int, up: bool | None = None, mtu: int = 0, address: str = "") -> tuple[int, int, bytes]:
        r = rtnl.set_link(index, up=up, mtu=mtu, address=address)
        return r.kind, r.flags, r.body

    def create_vxlan(self, v: VxlanDev) -> None:
        under = self._idx(v.underlay_dev)
        local = ipaddress.ip_address(v.local)
        data = rtnl.nested(rtnl.IFLA_INFO_DATA, rtnl.u32(IFLA_VXLAN_ID, v.vni),
                           rtnl.ip(IFLA_VXLAN_LOCAL6 if local.version == 6 else IFLA_VXLAN_LOCAL, local),
                           rtnl.attr(IFLA_VXLAN_PORT, struct.pack("!H", v.port)),
                           rtnl.u32(IFLA_VXLAN_LINK, under), rtnl.u8(IFLA_VXLAN_LEARNING, 0))
        body = rtnl.ifinfo() + rtnl.string(rtnl.IFLA_IFNAME, v.name)
        body += rtnl.nested(rtnl.IFLA_LINKINFO, rtnl.string(rtnl.IFLA_INFO_KIND, "vxlan"), data)
        body += rtnl.mac(rtnl.IFLA_ADDRESS, v.mac) + rtnl.u32(rtnl.IFLA_MTU, v.mtu)
        try:
            self.nl.one(rtnl.RTM_NEWLINK, rtnl.F_CREATE | rtnl.F_EXCL, body)
        except NetlinkError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise Unsupported("vxlan: kernel module vxlan is not available") from None
            raise
        self.update_vxlan(v)

    def update_vxlan(self, v: VxlanDev) -> None:
        idx = self._idx(v.name)
        set_ipv6(v.name, v.ipv6)
        self.nl.one(*self._set_link(idx, mtu=v.mtu, address=v.mac))
        for i, text in self.nl.addresses(idx):
            if i == idx and ":" not in text and text != v.address:
                self.nl.one(*_req(rtnl.address(rtnl.RTM_DELADDR, idx, ipaddress.ip_interface(text))))
        try:
            if v.address:
                self.nl.one(*_req(rtnl.address(rtnl.RTM_NEWADDR, idx, ipaddress.IPv4Interface(v.address))))
        except NetlinkError as e:
            if e.errno != errno.EEXIST:
                raise
        self.nl.one(*self._set_link(idx, up=True))


def set_ipv6(dev: str, on: bool) -> None:
    """IPv6 on the VXLAN device only when the network carries IPv6, and then without
    addresses of its own (addr_gen_mode 1: no link-local). A link-local address's DAD and
    router solicitations go to the all-zero FDB entry, which sends each to every peer, and
    every host then resolves every peer's underlay address: N x (N-1) ARP entries, which
    filled the kernel's machine-wide neighbour table (1,024 by default) in a 60-host lab, so
    that new hosts could not even ARP for etcd."""
    conf = f"net/ipv6/conf/{dev}"
    want = ((f"{conf}/addr_gen_mode", "1"), (f"{conf}/accept_ra", "0")) if on else ()  # first: no link-local is made
    try:
        for path, value in (*want, (f"{conf}/disable_ipv6", "0" if on else "1")):
            if read_sysctl(path) != value:
                write_sysctl(path, value)
    except OSError:
        if on:
            raise Unsupported(f"IPv6 on {dev}: this kernel has no IPv6 (/proc/sys/net/ipv6)") from None
        # a kernel without IPv6: nothing to turn off


def ipv6_on(dev: str) -> bool:
    try:
        return read_sysctl(f"net/ipv6/conf/{dev}/disable_ipv6") == "0"
    except OSError:
        return False


def _req(r: Request) -> tuple[int, int, bytes]:
    return r.kind, r.flags, r.body


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

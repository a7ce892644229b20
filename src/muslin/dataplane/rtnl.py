"""A small rtnetlink client: the messages Muslin's hot path needs, encoded by hand.

pyroute2's generic path costs about a millisecond per request (an asyncio loop run per call,
generic attribute classes); these few messages cost tens of microseconds. A `Socket` is one
NETLINK_ROUTE socket, in whatever network namespace it was created in; `batch` sends several
requests in one sendmsg and collects every ACK, so a sandbox's interface is configured in one
round trip.

Only the standard library: the CNI in-process path imports this without pyroute2.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

from muslin.model.kernel import LinkInfo

# message types and flags (linux/rtnetlink.h, linux/netlink.h)
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
F_REQUEST, F_MULTI, F_ACK, F_ECHO = 0x1, 0x2, 0x4, 0x8
F_DUMP, F_REPLACE, F_EXCL, F_CREATE = 0x300, 0x100, 0x200, 0x400
NLA_F_NESTED = 0x8000

# attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_AF_SPEC, IFLA_GROUP, IFLA_NET_NS_FD = 12, 18, 20, 26, 27, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BR_FORWARD_DELAY, IFLA_BR_STP_STATE = 1, 5
IFLA_MACVLAN_MODE = 1
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
IFLA_BRPORT_MODE = 4
IFLA_INET_CONF = 1
IPV4_DEVCONF_ARP_NOTIFY = 22
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTN_UNICAST = 254, 3, 0, 253, 1
IFF_UP, IFF_PROMISC = 0x1, 0x100
AF_BRIDGE = 7

_HDR = struct.Struct("=IHHII")
_IFI = struct.Struct("=BxHiII")
_IFA = struct.Struct("=BBBBI")
_RTM = struct.Struct("=BBBBBBBBI")


class NetlinkError(OSError):
    """A request the kernel refused: `errno` is the kernel's error number."""


# -- encoding -------------------------------------------------------------------------

def attr(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return struct.pack("=HH", n, kind) + data + b"\0" * (-n % 4)


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def u32(kind: int, v: int) -> bytes:
    return attr(kind, struct.pack("=I", v))


def u8(kind: int, v: int) -> bytes:
    return attr(kind, struct.pack("=B", v))


def string(kind: int, s: str) -> bytes:
    return attr(kind, s.encode() + b"\0")


def mac(kind: int, m: str) -> bytes:
    return attr(kind, bytes.fromhex(m.replace(":", "")))


def ip(kind: int, a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return attr(kind, a.packed)


def ifinfo(index: int = 0, flags: int = 0, change: int = 0, family: int = socket.AF_UNSPEC) -> bytes:
    return _IFI.pack(family, 0, index, flags, change)


# -- decoding -------------------------------------------------------------------------

def attrs(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    while offset + 4 <= len(data):
        n, kind = struct.unpack_from("=HH", data, offset)
        if n < 4:
            return
        yield kind & ~NLA_F_NESTED, data[offset + 4:offset + n]
        offset += (n + 3) & ~3


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode(errors="replace")


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def link_info(payload: bytes) -> LinkInfo:
    _fam, _type, index, flags, _change = _IFI.unpack_from(payload)
    a = dict(attrs(payload, _IFI.size))
    kind = ""
    if IFLA_LINKINFO in a:
        kind = _cstr(dict(attrs(a[IFLA_LINKINFO])).get(IFLA_INFO_KIND, b""))
    return LinkInfo(index, _cstr(a.get(IFLA_IFNAME, b"")), _mac(a.get(IFLA_ADDRESS, b"")),
                    struct.unpack("=I", a[IFLA_MTU])[0] if IFLA_MTU in a else 0,
                    struct.unpack("=I", a[IFLA_MASTER])[0] if IFLA_MASTER in a else 0,
                    bool(flags & IFF_UP), kind, _cstr(a.get(IFLA_IFALIAS, b"")))


def _group(payload: bytes) -> int:
    g = dict(attrs(payload, _IFI.size)).get(IFLA_GROUP)
    return struct.unpack("=I", g[:4])[0] if g else 0


@dataclass(frozen=True)
class Request:
    kind: int
    flags: int
    body: bytes


class Socket:
    """One NETLINK_ROUTE socket (in the namespace it was made in, or given as `fd`)."""

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        else:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE, fileno=fd)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Socket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the exchange ---------------------------------------------------------------
    def batch(self, requests: Iterable[Request]) -> list[list[bytes]]:
        """Send the requests in one sendmsg; return each one's reply payloads (dumps and
        echoes; [] for a plain ACK). Raises NetlinkError with the first refusal's errno,
        after reading every answer (the kernel goes on with the rest of the batch)."""
        results = self.batch_results(requests)
        for _payloads, err in results:
            if err:
                raise NetlinkError(err, os.strerror(err))
        return [payloads for payloads, _ in results]

    def batch_results(self, requests: Iterable[Request]) -> list[tuple[list[bytes], int]]:
        """`batch`, with each request's own errno (0: done) instead of raising."""
        out = bytearray()
        seqs: list[int] = []
        for r in requests:
            self.seq = (self.seq + 1) & 0x7FFFFFFF
            seqs.append(self.seq)
            out += _HDR.pack(_HDR.size + len(r.body), r.kind, r.flags | F_REQUEST | F_ACK, self.seq, 0) + r.body
        self.sock.sendto(bytes(out), (0, 0))
        replies: dict[int, list[bytes]] = {s: [] for s in seqs}
        errs: dict[int, int] = {}
        pending = set(seqs)
        while pending:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + _HDR.size <= len(data):
                n, kind, _flags, seq, _pid = _HDR.unpack_from(data, off)
                payload = data[off + _HDR.size:off + n]
                off += (n + 3) & ~3
                if seq not in pending:
                    continue
                if kind == NLMSG_ERROR:
                    errs[seq] = -struct.unpack_from("=i", payload)[0]
                    pending.discard(seq)
                elif kind == NLMSG_DONE:
                    pending.discard(seq)
                else:
                    replies[seq].append(payload)
        return [(replies[s], errs.get(s, 0)) for s in seqs]

    def one(self, kind: int, flags: int, body: bytes) -> list[bytes]:
        return self.batch([Request(kind, flags, body)])[0]

    # -- links ----------------------------------------------------------------------
    def link(self, name: str) -> LinkInfo | None:
        try:
            got = self.one(RTM_GETLINK, 0, ifinfo() + string(IFLA_IFNAME, name))
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return link_info(got[0]) if got else None

    def link_by_index(self, index: int) -> LinkInfo | None:
        try:
            got = self.one(RTM_GETLINK, 0, ifinfo(index))
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return link_info(got[0]) if got else None

    def links(self, group: int | None = None) -> list[LinkInfo]:
        """Every link (of one group). The kernel does not filter a link dump by group (it
        answers every link), so the group is checked here."""
        body = ifinfo() + (u32(IFLA_GROUP, group) if group is not None else b"")
        return [link_info(p) for p in self.one(RTM_GETLINK, F_DUMP, body) if group is None or _group(p) == group]

    def delete_link(self, index: int = 0, group: int | None = None) -> bool:
        """Delete one link (by index) or every link of a group in one message; False if gone."""
        body = ifinfo(index) + (u32(IFLA_GROUP, group) if group is not None else b"")
        try:
            self.one(RTM_DELLINK, 0, body)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    def addresses(self, index: int = 0) -> list[tuple[int, str]]:
        """(ifindex, 'addr/prefix') of every global address (of one link when index)."""
        out = []
        for p in self.one(RTM_GETADDR, F_DUMP, _IFA.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            fam, plen, _fl, scope, idx = _IFA.unpack_from(p)
            if scope != 0 or (index and idx != index):
                continue
            a = dict(attrs(p, _IFA.size))
            raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
            if raw:
                out.append((idx, f"{ipaddress.ip_address(raw)}/{plen}"))
        return out

    def default_oif(self, family: int = socket.AF_INET) -> int:
        """The output link of the main table's default route (0: none)."""
        for p in self.one(RTM_GETROUTE, F_DUMP, _RTM.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            _f, dst_len, _s, _t, table, _pr, _sc, _ty, _fl = _RTM.unpack_from(p)
            a = dict(attrs(p, _RTM.size))
            if dst_len == 0 and (struct.unpack("=I", a[RTA_TABLE])[0] if RTA_TABLE in a else table) == RT_TABLE_MAIN:
                if RTA_OIF in a:
                    return struct.unpack("=I", a[RTA_OIF])[0]
        return 0


# -- requests (built here, sent with Socket.batch / one) ------------------------------

def new_bridge(name: str, mtu: int, address: str) -> Request:
    data = nested(IFLA_INFO_DATA, u32(IFLA_BR_STP_STATE, 0), u32(IFLA_BR_FORWARD_DELAY, 0))
    body = ifinfo() + string(IFLA_IFNAME, name) + nested(IFLA_LINKINFO, string(IFLA_INFO_KIND, "bridge"), data)
    body += (u32(IFLA_MTU, mtu) if mtu else b"") + (mac(IFLA_ADDRESS, address) if address else b"")
    return Request(RTM_NEWLINK, F_CREATE | F_EXCL, body)


def new_veth(name: str, peer: str, peer_nsfd: int | None, mtu: int, master: int = 0, up: bool = False,
             address: str = "", peer_address: str = "", echo: bool = False) -> Request:
    """A veth pair in one message: `name` here (optionally enslaved and up), `peer` in the
    namespace of `peer_nsfd` (None: here too)."""
    pbody = ifinfo() + string(IFLA_IFNAME, peer) + (u32(IFLA_MTU, mtu) if mtu else b"")
    if peer_nsfd is not None:
        pbody += u32(IFLA_NET_NS_FD, peer_nsfd)
    if peer_address:
        pbody += mac(IFLA_ADDRESS, peer_address)
    info = nested(IFLA_LINKINFO, string(IFLA_INFO_KIND, "veth"), nested(IFLA_INFO_DATA, attr(VETH_INFO_PEER, pbody)))
    body = ifinfo(flags=IFF_UP if up else 0, change=IFF_UP if up else 0) + string(IFLA_IFNAME, name) + info
    body += (u32(IFLA_MTU, mtu) if mtu else b"") + (u32(IFLA_MASTER, master) if master else b"")
    body += mac(IFLA_ADDRESS, address) if address else b""
    return Request(RTM_NEWLINK, F_CREATE | F_EXCL | (F_ECHO if echo else 0), body)


def new_macvlan(name: str, parent: int, mode: str, nsfd: int | None, mtu: int, address: str = "") -> Request:
    info = nested(IFLA_LINKINFO, string(IFLA_INFO_KIND, "macvlan"),
                  nested(IFLA_INFO_DATA, u32(IFLA_MACVLAN_MODE, MACVLAN_MODES[mode])))
    body = ifinfo() + string(IFLA_IFNAME, name) + u32(IFLA_LINK, parent) + info
    body += (u32(IFLA_MTU, mtu) if mtu else b"") + (mac(IFLA_ADDRESS, address) if address else b"")
    body += u32(IFLA_NET_NS_FD, nsfd) if nsfd is not None else b""
    return Request(RTM_NEWLINK, F_CREATE | F_EXCL, body)


def new_kind(name: str, kind: str, link: int) -> Request:
    body = ifinfo() + string(IFLA_IFNAME, name) + u32(IFLA_LINK, link)
    return Request(RTM_NEWLINK, F_CREATE | F_EXCL, body + nested(IFLA_LINKINFO, string(IFLA_INFO_KIND, kind)))


def set_link(index: int, up: bool | None = None, mtu: int = 0, master: int | None = None, alias: str | None = None,
             promisc: bool | None = None, group: int | None = None, arp_notify: bool = False,
             address: str = "") -> Request:
    flags = change = 0
    if up is not None:
        flags |= IFF_UP if up else 0
        change |= IFF_UP
    if promisc is not None:
        flags |= IFF_PROMISC if promisc else 0
        change |= IFF_PROMISC
    body = ifinfo(index, flags, change)
    body += u32(IFLA_MTU, mtu) if mtu else b""
    body += u32(IFLA_MASTER, master) if master is not None else b""
    body += string(IFLA_IFALIAS, alias) if alias is not None else b""
    body += u32(IFLA_GROUP, group) if group is not None else b""
    body += mac(IFLA_ADDRESS, address) if address else b""
    if arp_notify:
        body += nested(IFLA_AF_SPEC, nested(socket.AF_INET, nested(IFLA_INET_CONF, u32(IPV4_DEVCONF_ARP_NOTIFY, 1))))
    return Request(RTM_SETLINK, 0, body)


def set_hairpin(index: int, on: bool) -> Request:
    body = ifinfo(index, family=AF_BRIDGE) + nested(IFLA_PROTINFO, u8(IFLA_BRPORT_MODE, 1 if on else 0))
    return Request(RTM_SETLINK, 0, body)


def address(kind: int, index: int, addr: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> Request:
    """RTM_NEWADDR (an IPv6 address without DAD) or RTM_DELADDR."""
    v4 = addr.version == 4
    fam = socket.AF_INET if v4 else socket.AF_INET6
    body = _IFA.pack(fam, addr.network.prefixlen, 0 if v4 else IFA_F_NODAD, 0, index)
    body += ip(IFA_LOCAL, addr.ip) + ip(IFA_ADDRESS, addr.ip)
    if v4 and addr.network.prefixlen < 31 and kind == RTM_NEWADDR:
        body += ip(IFA_BROADCAST, addr.network.broadcast_address)
    return Request(kind, F_CREATE | F_EXCL if kind == RTM_NEWADDR else 0, body)


def route(index: int, dst: ipaddress.IPv4Network | ipaddress.IPv6Network,
          gw: ipaddress.IPv4Address | ipaddress.IPv6Address | None, replace: bool) -> Request:
    fam = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    scope = RT_SCOPE_UNIVERSE if gw is not None else RT_SCOPE_LINK
    body = _RTM.pack(fam, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
    body += (ip(RTA_DST, dst.network_address) if dst.prefixlen else b"") + u32(RTA_OIF, index)
    body += ip(RTA_GATEWAY, gw) if gw is not None else b""
    return Request(RTM_NEWROUTE, F_CREATE | (F_REPLACE if replace else F_EXCL), body)

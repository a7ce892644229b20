"""The multi-host agent's kernel edge: observe and change the routes, FDB and neighbour
entries and the VXLAN device of a cluster network, in the current namespace (the agent
runs inside the host it manages). Only objects the agent owns are observed: routes with
protocol RTPROT_MUSLIN, and entries on the network's own VXLAN device."""

from __future__ import annotations

import errno
import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from muslin.model.kernel import RTPROT_MUSLIN, Changes, FdbSpec, NeighSpec, Observed, RouteSpec, VxlanDev
from muslin.model.errors import Invalid, NotFound, Unavailable, Unsupported

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
    def observe(self, vxlan_name: str) -> Observed:
        routes = set()
        for r in self.ipr.get_routes(family=socket.AF_INET, table=254):
            if r["proto"] != RTPROT_MUSLIN:
                continue
            dst = f"{_attr(r, 'RTA_DST', '0.0.0.0')}/{r['dst_len']}"
            routes.add(RouteSpec(dst, _attr(r, "RTA_GATEWAY", ""), self.name(_attr(r, "RTA_OIF", 0)),
                                 bool(r["flags"] & RTNH_F_ONLINK)))
        idx = self.index(vxlan_name)
        if idx is None:
            return Observed(routes=frozenset(routes))
        link = self.ipr.get_links(idx)[0]
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            raise Invalid(f"link {vxlan_name} exists but is not a VXLAN device; remove it or rename the network")
        data = info.get_attr("IFLA_INFO_DATA")
        addrs = [f"{_attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}" for a in self.ipr.get_addr(index=idx, family=socket.AF_INET)]
        vx = VxlanDev(vxlan_name, _attr(data, "IFLA_VXLAN_ID", 0), _attr(data, "IFLA_VXLAN_LOCAL", ""),
                      _attr(data, "IFLA_VXLAN_PORT", 0), self.name(_attr(data, "IFLA_VXLAN_LINK", 0)),
                      _attr(link, "IFLA_MTU", 0), _attr(link, "IFLA_ADDRESS", ""), addrs[0] if len(addrs) == 1 else ",".join(addrs))
        neighs = set()
        for n in self.ipr.get_neighbours(family=socket.AF_INET, ifindex=idx):
            if n["state"] & NUD_PERMANENT and n.get_attr("NDA_LLADDR"):
                neighs.add(NeighSpec(vxlan_name, n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR").lower()))
        fdb = set()
        for n in self.ipr.get_neighbours(family=AF_BRIDGE, ifindex=idx):
            if n["ifindex"] == idx and n.get_attr("NDA_DST") and n.get_attr("NDA_LLADDR"):
                fdb.add(FdbSpec(vxlan_name, n.get_attr("NDA_LLADDR").lower(), n.get_attr("NDA_DST")))
        return Observed(frozenset(routes), frozenset(neighs), frozenset(fdb), vx)

    # -- apply ---------------------------------------------------------------------------
    def apply(self, ch: Changes) -> None:
        try:
            self._apply(ch)
        except NetlinkError as e:
            raise Unavailable(f"kernel refused a change ({ch.summary()}): {e.args[1] if len(e.args) > 1 else e}") from None

    def _apply(self, ch: Changes) -> None:
        for r in ch.del_routes:
            self._ignore(errno.ESRCH, self.ipr.route, "del", **self._route(r))
        if ch.vxlan_delete:
            idx = self.index(ch.vxlan_delete)
            if idx is not None:
                self.ipr.link("del", index=idx)
        if ch.vxlan_create:
            self.create_vxlan(ch.vxlan_create)
        if ch.vxlan_update:
            self.update_vxlan(ch.vxlan_update)
        for n in ch.del_neighs:
            self._ignore(errno.ENOENT, self.ipr.neigh, "del", dst=n.ip, lladdr=n.mac, ifindex=self._idx(n.dev))
        for f in ch.del_fdb:
            self._ignore(errno.ENOENT, self.ipr.fdb, "del", ifindex=self._idx(f.dev), lladdr=f.mac, dst=f.dst)
        for f in ch.add_fdb:
            self._ignore(errno.EEXIST, self.ipr.fdb, "append", ifindex=self._idx(f.dev), lladdr=f.mac, dst=f.dst)
        for n in ch.add_neighs:
            self.ipr.neigh("replace", dst=n.ip, lladdr=n.mac, ifindex=self._idx(n.dev), state=NUD_PERMANENT)
        for r in ch.add_routes:
            self.ipr.route("replace", **self._route(r))

    def _idx(self, dev: str) -> int:
        idx = self.index(dev)
        if idx is None:
            raise NotFound(f"link {dev} does not exist")
        return idx

    def _route(self, r: RouteSpec) -> dict:
        kw = dict(dst=r.dst, gateway=r.gateway, oif=self._idx(r.dev), proto=RTPROT_MUSLIN, table=254)
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

    def delete_vxlan(self, name: str) -> None:
        idx = self.index(name)
        if idx is not None:
            self.ipr.link("del", index=idx)

    def delete_routes(self, routes) -> None:
        for r in routes:
            try:
                self._ignore(errno.ESRCH, self.ipr.route, "del", **self._route(r))
            except NotFound:
                pass

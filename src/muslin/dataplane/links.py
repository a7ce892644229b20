"""Links, addresses, routes and sysctls, programmed over netlink (pyroute2).

`Host` works on the namespace the process runs in (the host). Work inside a
container's namespace goes through the `sandbox_*` functions, which run in a child
(nsexec) with a netlink socket of that namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from muslin.dataplane.nsexec import netns_exists, run_in_netns
from muslin.model.errors import Conflict, Invalid, NotFound, Unavailable, Unsupported
from muslin.model.kernel import LinkInfo, SandboxConfig, SandboxResult
from muslin.model.types import IPAddress, IPInterface, Route

IFA_F_NODAD = 0x02
IFF_PROMISC = 0x100

# Kernel link kinds missing here map to Unsupported with the feature named.
_KIND_FEATURE = {
    "ipvlan": "ipvlan (kernel module ipvlan)",
    "vlan": "802.1Q VLAN devices (kernel module 8021q)",
    "geneve": "geneve (kernel module geneve)",
    "wireguard": "wireguard (kernel module wireguard)",
    "dummy": "dummy devices (kernel module dummy)",
    "vxlan": "vxlan (kernel module vxlan)",
    "macvlan": "macvlan (kernel module macvlan)",
    "bridge": "Linux bridge (kernel module bridge)",
}


def _netlink_error(e: NetlinkError, what: str, kind: str = "") -> Exception:
    if e.code == errno.EOPNOTSUPP and kind in _KIND_FEATURE:
        return Unsupported(f"{kind}: {_KIND_FEATURE[kind]} is not available in this kernel")
    if e.code == errno.EEXIST:
        return Conflict(f"{what}: already exists")
    if e.code in (errno.ENODEV, errno.ENOENT):
        return NotFound(f"{what}: no such device")
    if e.code == errno.ERANGE:
        return Invalid(f"{what}: value out of range (e.g. MTU)")
    if e.code == errno.EADDRNOTAVAIL:
        return Invalid(f"{what}: address not available (e.g. an invalid MAC)")
    return Unavailable(f"{what}: {os.strerror(e.code) if e.code > 0 else e}")


def write_sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def read_sysctl(path: str) -> str:
    with open(f"/proc/sys/{path}") as f:
        return f.read().strip()


def _given(**kw: object) -> dict:
    """The netlink attributes that have a value ('' and 0 mean: leave it to the kernel)."""
    return {k: v for k, v in kw.items() if v}


def _link_info(msg) -> LinkInfo:  # type: ignore[no-untyped-def]
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else ""
    return LinkInfo(msg["index"], msg.get_attr("IFLA_IFNAME") or "", msg.get_attr("IFLA_ADDRESS") or "",
                    msg.get_attr("IFLA_MTU") or 0, msg.get_attr("IFLA_MASTER") or 0, bool(msg["flags"] & 1),
                    kind or "", msg.get_attr("IFLA_IFALIAS") or "")


class Host:
    """The host side: bridges, veth pairs, macvlan, addresses. One netlink socket."""

    def __init__(self) -> None:
        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups -------------------------------------------------------------
    def index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def _index_of(self, name: str) -> int:
        idx = self.index(name)
        if idx is None:
            raise NotFound(f"link {name} does not exist")
        return idx

    def link(self, name: str) -> LinkInfo | None:
        try:  # one RTM_GETLINK by name (no separate index lookup)
            return _link_info(self.ipr.link("get", ifname=name)[0])
        except (NetlinkError, IndexError):
            return None

    def default_mtu(self) -> int:
        """MTU of the link holding the default route, else 1500."""
        try:
            for r in self.ipr.get_default_routes(family=socket.AF_INET):
                oif = r.get_attr("RTA_OIF")
                if oif:
                    return self.ipr.get_links(oif)[0].get_attr("IFLA_MTU") or 1500
        except NetlinkError:
            pass
        return 1500

    # -- bridges and addresses -----------------------------------------------------
    def create_bridge(self, name: str, mtu: int, mac: str, alias: str) -> None:
        """A new bridge with a fixed MAC (without one a bridge takes its lowest port's, which
        changes as ports come and go), marked with `alias`, up."""
        try:
            self.ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0,
                          **_given(mtu=mtu, address=mac))
            self.ipr.link("set", index=self._index_of(name), ifalias=alias, state="up")
        except NetlinkError as e:
            raise _netlink_error(e, f"bridge {name}", "bridge") from None

    def set_link(self, name: str, mtu: int = 0, up: bool = True, promisc: bool | None = None) -> None:
        kw: dict = {"state": "up" if up else "down"}
        if mtu:
            kw["mtu"] = mtu
        try:
            idx = self._index_of(name)
            self.ipr.link("set", index=idx, **kw)
            if promisc is not None:
                self.ipr.link("set", index=idx, flags=IFF_PROMISC if promisc else 0, change=IFF_PROMISC)
        except NetlinkError as e:
            raise _netlink_error(e, f"link {name}") from None

    def add_address(self, name: str, addr: IPInterface) -> bool:
        kw = {"index": self._index_of(name), "address": str(addr.ip), "prefixlen": addr.network.prefixlen}
        if addr.version == 6:
            kw["flags"] = IFA_F_NODAD
        try:
            self.ipr.addr("add", **kw)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return False
            raise _netlink_error(e, f"address {addr} on {name}") from None
        return True

    def remove_address(self, name: str, addr: IPInterface) -> None:
        idx = self.index(name)
        if idx is None:
            return
        try:
            self.ipr.addr("del", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen)
        except NetlinkError as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise _netlink_error(e, f"address {addr} on {name}") from None

    # -- links -------------------------------------------------------------------
    def delete_link(self, name: str) -> bool:
        """Delete a link by name; True if it existed. Missing links are fine."""
        idx = self.index(name)
        if idx is None:
            return False
        try:
            self.ipr.link("del", index=idx)
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise _netlink_error(e, f"link {name}") from None
        return True

    def create_veth(self, name: str, peer: str, peer_netns: str, mtu: int, peer_mac: str = "") -> LinkInfo:
        """A veth pair: `name` here, `peer` in `peer_netns` ('' = also here)."""
        spec = {"ifname": peer, "mtu": mtu, **_given(net_ns_fd=peer_netns, address=peer_mac)}
        try:
            self.ipr.link("add", ifname=name, kind="veth", mtu=mtu, peer=spec)
        except NetlinkError as e:
            raise _netlink_error(e, f"veth {name}") from None
        info = self.link(name)
        if info is None:
            raise Unavailable(f"veth {name} vanished after creation")
        return info

    def create_macvlan(self, name: str, parent: str, mode: str, netns: str, mtu: int, mac: str = "") -> None:
        pidx = self.index(parent)
        if pidx is None:
            raise NotFound(f"macvlan parent link {parent} does not exist")
        try:  # netns '' = stays in this namespace (Docker moves it into the container itself)
            self.ipr.link("add", ifname=name, kind="macvlan", link=pidx, macvlan_mode=mode,
                          **_given(net_ns_fd=netns, mtu=mtu, address=mac))
        except NetlinkError as e:
            raise _netlink_error(e, f"macvlan {name} on {parent}", "macvlan") from None

    def kind_supported(self, kind: str) -> bool:
        """Does this kernel know link kind `kind`? Probed with a link-add on loopback that
        fails (or is removed at once); the kernel answers EOPNOTSUPP for unknown kinds."""
        lo = self.index("lo") or 1
        name = f"mprobe{os.getpid() % 100000}"
        extra = {"vlan_id": 1} if kind == "vlan" else {}
        try:
            self.ipr.link("add", ifname=name, kind=kind, link=lo, **extra)
        except NetlinkError as e:
            return e.code != errno.EOPNOTSUPP
        self.delete_link(name)
        return True

    def enslave(self, name: str, bridge: str, hairpin: bool = False) -> None:
        idx, bidx = self.index(name), self.index(bridge)
        if idx is None or bidx is None:
            raise NotFound(f"cannot attach {name} to {bridge}: link missing")
        try:
            self.ipr.link("set", index=idx, master=bidx)
            if hairpin:
                self.ipr.brport("set", index=idx, mode=1)  # IFLA_BRPORT_MODE: hairpin
            self.ipr.link("set", index=idx, state="up")
        except NetlinkError as e:
            raise _netlink_error(e, f"attach {name} to {bridge}") from None

    def set_hairpin(self, name: str, on: bool) -> None:
        try:
            self.ipr.brport("set", index=self._index_of(name), mode=1 if on else 0)  # IFLA_BRPORT_MODE
        except NetlinkError as e:
            raise _netlink_error(e, f"hairpin on {name}") from None


# -- inside a sandbox (run in a child process joined to its namespace) ---------------


def _gratuitous_arp(ifname: str, mac: str, ip: IPAddress) -> None:
    """Send one gratuitous ARP request (best effort) so neighbours update at once."""
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    except OSError:
        return
    try:
        hw = bytes.fromhex(mac.replace(":", ""))
        pkt = (b"\xff" * 6 + hw + struct.pack("!H", 0x0806)
               + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + ip.packed + b"\x00" * 6 + ip.packed)
        s.bind((ifname, 0))
        s.send(pkt)
    except OSError:
        pass
    finally:
        s.close()


def _add_route(ipr: IPRoute, idx: int, r: Route, replace: bool) -> bool:
    """Install one route; a default route the sandbox already has is kept (False) unless
    `replace`: its first network keeps the default route, as in Docker."""
    kw: dict = {"dst": str(r.dst), "oif": idx}
    if r.gw is not None:
        kw["gateway"] = str(r.gw)
    if r.dst.prefixlen != 0 or replace:
        ipr.route("replace", **kw)
        return True
    try:
        ipr.route("add", **kw)
    except NetlinkError as e:
        if e.code == errno.EEXIST:
            return False
        raise
    return True


def _configure_sandbox(cfg: SandboxConfig) -> SandboxResult:
    """Runs inside the sandbox namespace."""
    has_v6 = any(a.version == 6 for a in cfg.addresses)
    arp_notify = False
    try:
        write_sysctl(f"net/ipv4/conf/{cfg.ifname}/arp_notify", "1")
        arp_notify = True
        if has_v6:
            write_sysctl(f"net/ipv6/conf/{cfg.ifname}/accept_dad", "0")
    except OSError:
        pass
    installed: list[Route] = []
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=cfg.ifname)
        if not found:
            raise NotFound(f"interface {cfg.ifname} missing in sandbox")
        idx = found[0]
        kw = _given(address=cfg.mac, mtu=cfg.mtu)
        try:
            if kw:
                ipr.link("set", index=idx, **kw)
            for a in cfg.addresses:
                akw = {"index": idx, "address": str(a.ip), "prefixlen": a.network.prefixlen}
                if a.version == 6:
                    akw["flags"] = IFA_F_NODAD
                ipr.addr("add", **akw)
            ipr.link("set", index=idx, state="up")
            for r in cfg.routes:
                if _add_route(ipr, idx, r, cfg.replace_default):
                    installed.append(r)
        except NetlinkError as e:
            raise _netlink_error(e, f"sandbox interface {cfg.ifname}") from None
        mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    # With arp_notify the kernel already announced the address when the link came up;
    # a packet socket of our own costs two synchronize_net() (~20 ms) per sandbox.
    for a in cfg.addresses:
        if a.version == 4 and not arp_notify:
            _gratuitous_arp(cfg.ifname, mac, a.ip)
    return SandboxResult(mac, tuple(installed))


def sandbox_setup(netns: str, cfg: SandboxConfig) -> SandboxResult:
    """Configure `cfg.ifname` inside `netns` (addresses, routes, MTU, MAC, up)."""
    return run_in_netns(netns, _configure_sandbox, cfg)


def _link_names() -> list[str]:
    with IPRoute() as ipr:
        return [m.get_attr("IFLA_IFNAME") for m in ipr.get_links()]


def sandbox_links(netns: str) -> list[str]:
    return run_in_netns(netns, _link_names)


def _delete_link(ifname: str) -> bool:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except NetlinkError:
            return False
        return True


def sandbox_delete_link(netns: str, ifname: str) -> bool:
    """Delete `ifname` inside `netns`; fine when the netns or link is gone."""
    if not netns or not netns_exists(netns):
        return False
    try:
        return run_in_netns(netns, _delete_link, ifname)
    except NotFound:
        return False


def _describe(ifname: str) -> dict:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return {}
        idx = found[0]
        link = ipr.get_links(idx)[0]
        addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx)
                 if a["scope"] == 0]
        return {"mac": link.get_attr("IFLA_ADDRESS"), "mtu": link.get_attr("IFLA_MTU"),
                "up": bool(link["flags"] & 1), "addresses": addrs}


def sandbox_describe(netns: str, ifname: str) -> dict:
    """MAC, MTU, up and global addresses of `ifname` in `netns` ({} if missing)."""
    return run_in_netns(netns, _describe, ifname)


def _set_loopback(up: bool) -> bool:
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if not lo:
            return False
        was = bool(ipr.get_links(lo[0])[0]["flags"] & 1)
        if was != up:
            ipr.link("set", index=lo[0], state="up" if up else "down")
        return was


def sandbox_set_loopback(netns: str, up: bool) -> bool:
    """Loopback up or down inside `netns`; returns whether it was up."""
    return run_in_netns(netns, _set_loopback, up)


def _all_addresses() -> list[str]:
    with IPRoute() as ipr:
        return [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr() if a["scope"] == 0]


def sandbox_addresses(netns: str) -> list[IPInterface]:
    return [ipaddress.ip_interface(a) for a in run_in_netns(netns, _all_addresses)]

"""Links, addresses, routes and sysctls, programmed over netlink (pyroute2).

`Host` works on the namespace the process runs in (the host). Work inside a
container's namespace goes through `sandbox_setup`/`sandbox_*` functions, which run in
a short-lived child (nsexec) with a netlink socket of that namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from muslin.dataplane.nsexec import netns_exists, run_in_netns
from muslin.model.errors import Conflict, Invalid, NotFound, Unavailable, Unsupported
from muslin.model.types import IPAddress, IPInterface, Route

IFA_F_NODAD = 0x02

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
    return Unavailable(f"{what}: {os.strerror(e.code) if e.code > 0 else e}")


def write_sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def read_sysctl(path: str) -> str:
    with open(f"/proc/sys/{path}") as f:
        return f.read().strip()


@dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    mac: str
    mtu: int
    master: int
    up: bool
    kind: str


class Host:
    """The host side: bridges, veth pairs, macvlan, addresses, routes, sysctls."""

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

    def link(self, name: str) -> LinkInfo | None:
        try:  # one RTM_GETLINK by name (no separate index lookup)
            msg = self.ipr.link("get", ifname=name)[0]
        except (NetlinkError, IndexError):
            return None
        idx = msg["index"]
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else ""
        return LinkInfo(idx, name, msg.get_attr("IFLA_ADDRESS") or "", msg.get_attr("IFLA_MTU") or 0,
                        msg.get_attr("IFLA_MASTER") or 0, bool(msg["flags"] & 1), kind or "")

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

    # -- bridges ---------------------------------------------------------------
    def ensure_bridge(self, name: str, mtu: int, addresses: Iterable[IPInterface]) -> LinkInfo:
        """Create (or adopt) bridge `name`, up, with `addresses`. Idempotent."""
        if self.index(name) is None:
            try:
                self.ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise _netlink_error(e, f"bridge {name}", "bridge") from None
        idx = self.index(name)
        if idx is None:
            raise Unavailable(f"bridge {name} vanished while being created")
        try:
            self.ipr.link("set", index=idx, mtu=mtu, state="up")
        except NetlinkError as e:
            raise _netlink_error(e, f"bridge {name} mtu {mtu}") from None
        for a in addresses:
            self.ensure_address(idx, a)
        info = self.link(name)
        assert info is not None
        return info

    def ensure_address(self, index: int, addr: IPInterface) -> None:
        kw = {"index": index, "address": str(addr.ip), "prefixlen": addr.network.prefixlen}
        if addr.version == 6:
            kw["flags"] = IFA_F_NODAD
        try:
            self.ipr.addr("add", **kw)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise _netlink_error(e, f"address {addr}") from None

    def remove_address(self, index: int, addr: IPInterface) -> None:
        try:
            self.ipr.addr("del", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
        except NetlinkError as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise _netlink_error(e, f"address {addr}") from None

    def bridge_ports(self, name: str) -> list[str]:
        idx = self.index(name)
        if idx is None:
            return []
        return [m.get_attr("IFLA_IFNAME") for m in self.ipr.get_links() if m.get_attr("IFLA_MASTER") == idx]

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

    def create_veth(self, host_name: str, peer_name: str, peer_netns: str, mtu: int, peer_mac: str = "") -> LinkInfo:
        """A veth pair: `host_name` here, `peer_name` in `peer_netns` ('' = also here)."""
        peer: dict = {"ifname": peer_name, "mtu": mtu}
        if peer_netns:
            peer["net_ns_fd"] = peer_netns
        if peer_mac:
            peer["address"] = peer_mac
        try:
            self.ipr.link("add", ifname=host_name, kind="veth", mtu=mtu, peer=peer)
        except NetlinkError as e:
            raise _netlink_error(e, f"veth {host_name}") from None
        info = self.link(host_name)
        if info is None:
            raise Unavailable(f"veth {host_name} vanished after creation")
        return info

    def create_macvlan(self, name: str, parent: str, mode: str, netns: str, mtu: int, mac: str = "") -> None:
        pidx = self.index(parent)
        if pidx is None:
            raise NotFound(f"macvlan parent link {parent} does not exist")
        kw: dict = {"ifname": name, "kind": "macvlan", "link": pidx, "macvlan_mode": mode}
        if netns:  # '' = stays in this namespace (Docker moves it into the container itself)
            kw["net_ns_fd"] = netns
        if mtu:
            kw["mtu"] = mtu
        if mac:
            kw["address"] = mac
        try:
            self.ipr.link("add", **kw)
        except NetlinkError as e:
            raise _netlink_error(e, f"macvlan {name} on {parent}", "macvlan") from None

    def create_kind(self, name: str, kind: str, **kw) -> None:
        """Create a link of any kind; missing kernel support → Unsupported naming it."""
        try:
            self.ipr.link("add", ifname=name, kind=kind, **kw)
        except NetlinkError as e:
            raise _netlink_error(e, f"{kind} link {name}", kind) from None

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
        idx = self.index(name)
        if idx is None:
            raise NotFound(f"link {name} does not exist")
        try:
            self.ipr.brport("set", index=idx, mode=1 if on else 0)  # IFLA_BRPORT_MODE: hairpin
        except NetlinkError as e:
            raise _netlink_error(e, f"hairpin on {name}") from None

    def routes_via(self, dst: str) -> list[dict]:
        return [dict(r["attrs"]) for r in self.ipr.get_routes(dst=dst)]

    def enable_forwarding(self, v4: bool, v6: bool) -> None:
        if v4 and read_sysctl("net/ipv4/ip_forward") != "1":
            write_sysctl("net/ipv4/ip_forward", "1")
        if v6 and read_sysctl("net/ipv6/conf/all/forwarding") != "1":
            write_sysctl("net/ipv6/conf/all/forwarding", "1")


# -- inside a sandbox (run in a child process joined to its namespace) ---------------

@dataclass(frozen=True)
class SandboxConfig:
    ifname: str
    addresses: tuple[IPInterface, ...]
    routes: tuple[Route, ...]
    mtu: int = 0
    mac: str = ""


def _gratuitous_arp(ifname: str, index: int, mac: str, ip: IPAddress) -> None:
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


def _configure_sandbox(cfg: SandboxConfig) -> str:
    """Runs inside the sandbox namespace. Returns the interface MAC."""
    has_v6 = any(a.version == 6 for a in cfg.addresses)
    arp_notify = False
    try:
        write_sysctl(f"net/ipv4/conf/{cfg.ifname}/arp_notify", "1")
        arp_notify = True
        if has_v6:
            write_sysctl(f"net/ipv6/conf/{cfg.ifname}/accept_dad", "0")
    except OSError:
        pass
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=cfg.ifname)
        if not found:
            raise NotFound(f"interface {cfg.ifname} missing in sandbox")
        idx = found[0]
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")
        kw: dict = {}
        if cfg.mac:
            kw["address"] = cfg.mac
        if cfg.mtu:
            kw["mtu"] = cfg.mtu
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
                rkw: dict = {"dst": str(r.dst), "oif": idx}
                if r.gw is not None:
                    rkw["gateway"] = str(r.gw)
                ipr.route("replace", **rkw)
        except NetlinkError as e:
            raise _netlink_error(e, f"sandbox interface {cfg.ifname}") from None
        mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    # With arp_notify the kernel already announced the address when the link came up;
    # a packet socket of our own costs two synchronize_net() (~20 ms) per sandbox.
    for a in cfg.addresses:
        if a.version == 4 and not arp_notify:
            _gratuitous_arp(cfg.ifname, idx, mac, a.ip)
    return mac


def sandbox_setup(netns: str, cfg: SandboxConfig) -> str:
    """Configure `cfg.ifname` inside `netns` (addresses, routes, MTU, MAC, up)."""
    return run_in_netns(netns, _configure_sandbox, cfg)


def _has_link(ifname: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def sandbox_has_link(netns: str, ifname: str) -> bool:
    return run_in_netns(netns, _has_link, ifname)


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


def _loopback_up() -> None:
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")


def sandbox_loopback_up(netns: str) -> None:
    run_in_netns(netns, _loopback_up)


def _all_addresses() -> list[str]:
    with IPRoute() as ipr:
        return [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr() if a["scope"] == 0]


def sandbox_addresses(netns: str) -> list[IPInterface]:
    return [ipaddress.ip_interface(a) for a in run_in_netns(netns, _all_addresses)]

"""Links, addresses and routes over rtnetlink (dataplane/rtnl.py), and sysctls.

`Host` works on the namespace the process runs in (the host). Work inside a sandbox's
namespace goes over a netlink socket bound to that namespace (`nsexec.netlink_socket`), in
this process: one round trip configures a sandbox's interface.
"""

from __future__ import annotations

import errno
import ipaddress
import os

from muslin.dataplane import rtnl
from muslin.dataplane.nsexec import netlink_socket, netns_exists, open_netns
from muslin.dataplane.rtnl import NetlinkError, Request
from muslin.model.errors import Conflict, Invalid, NotFound, Unavailable, Unsupported
from muslin.model.kernel import LinkInfo, SandboxConfig, SandboxResult
from muslin.model.names import REAP_GROUP
from muslin.model.types import IPInterface, Route

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


def netlink_error(e: OSError, what: str, kind: str = "") -> Exception:
    code = e.errno or 0
    if code == errno.EOPNOTSUPP and kind in _KIND_FEATURE:
        return Unsupported(f"{kind}: {_KIND_FEATURE[kind]} is not available in this kernel")
    if code == errno.EEXIST:
        return Conflict(f"{what}: already exists")
    if code in (errno.ENODEV, errno.ENOENT):
        return NotFound(f"{what}: no such device")
    if code == errno.ERANGE:
        return Invalid(f"{what}: value out of range (e.g. MTU)")
    if code == errno.EADDRNOTAVAIL:
        return Invalid(f"{what}: address not available (e.g. an invalid MAC)")
    if code == errno.EINVAL and kind == "macvlan":
        return Invalid(f"{what}: the kernel refused it: a macvlan parent must be an Ethernet device")
    return Unavailable(f"{what}: {os.strerror(code) if code > 0 else e}")


def write_sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def read_sysctl(path: str) -> str:
    with open(f"/proc/sys/{path}") as f:
        return f.read().strip()


class Host:
    """The host side: bridges, veth pairs, macvlan, addresses. One netlink socket."""

    def __init__(self) -> None:
        self.nl = rtnl.Socket()

    def close(self) -> None:
        self.nl.close()

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _do(self, what: str, *requests: Request, kind: str = "") -> None:
        try:
            self.nl.batch(requests)
        except NetlinkError as e:
            raise netlink_error(e, what, kind) from None

    # -- lookups -------------------------------------------------------------
    def link(self, name: str) -> LinkInfo | None:
        return self.nl.link(name)

    def _index(self, name: str) -> int:
        info = self.nl.link(name)
        if info is None:
            raise NotFound(f"link {name} does not exist")
        return info.index

    def default_mtu(self) -> int:
        """MTU of the link holding the default route, else 1500."""
        oif = self.nl.default_oif()
        info = self.nl.link_by_index(oif) if oif else None
        return info.mtu if info and info.mtu else 1500

    # -- bridges and addresses -----------------------------------------------------
    def create_bridge(self, name: str, mtu: int, mac: str, alias: str) -> None:
        """A new bridge with a fixed MAC (without one a bridge takes its lowest port's, which
        changes as ports come and go), marked with `alias`, up."""
        self._do(f"bridge {name}", rtnl.new_bridge(name, mtu, mac), kind="bridge")
        self._do(f"bridge {name}", rtnl.set_link(self._index(name), up=True, alias=alias))

    def set_link(self, name: str, mtu: int = 0, up: bool = True, promisc: bool | None = None) -> None:
        self._do(f"link {name}", rtnl.set_link(self._index(name), up=up, mtu=mtu, promisc=promisc))

    def add_address(self, name: str, addr: IPInterface) -> bool:
        try:
            self.nl.batch([rtnl.address(rtnl.RTM_NEWADDR, self._index(name), addr)])
        except NetlinkError as e:
            if e.errno == errno.EEXIST:
                return False
            raise netlink_error(e, f"address {addr} on {name}") from None
        return True

    def remove_address(self, name: str, addr: IPInterface) -> None:
        info = self.nl.link(name)
        if info is None:
            return
        try:
            self.nl.batch([rtnl.address(rtnl.RTM_DELADDR, info.index, addr)])
        except NetlinkError as e:
            if e.errno not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise netlink_error(e, f"address {addr} on {name}") from None

    # -- links -------------------------------------------------------------------
    def delete_link(self, name: str) -> bool:
        """Delete a link by name; True if it existed. Missing links are fine."""
        info = self.nl.link(name)
        if info is None:
            return False
        try:
            return self.nl.delete_link(info.index)
        except NetlinkError as e:
            raise netlink_error(e, f"link {name}") from None

    def create_veth(self, name: str, peer: str, peer_netns: str, mtu: int, peer_mac: str = "", bridge: str = "",
                    hairpin: bool = False, mac: str = "") -> LinkInfo:
        """A veth pair in one message: `name` here (on `bridge` and up, when given), `peer` in
        `peer_netns` ('' = here too)."""
        master = self._index(bridge) if bridge else 0
        nsfd = open_netns(peer_netns) if peer_netns else None
        try:
            got = self.nl.batch([rtnl.new_veth(name, peer, nsfd, mtu, master, up=bool(bridge), address=mac,
                                               peer_address=peer_mac, echo=True)])[0]
        except NetlinkError as e:
            raise netlink_error(e, f"veth {name}") from None
        finally:
            if nsfd is not None:
                os.close(nsfd)
        made = [i for i in map(rtnl.link_info, got) if i.name == name]  # the kernel echoes what it made
        info = made[-1] if made else self.nl.link(name)
        if info is None:
            raise Unavailable(f"veth {name} vanished after creation")
        if hairpin:
            self._do(f"hairpin on {name}", rtnl.set_hairpin(info.index, True))
        return info

    def create_macvlan(self, name: str, parent: str, mode: str, netns: str, mtu: int, mac: str = "") -> None:
        pinfo = self.nl.link(parent)
        if pinfo is None:
            raise NotFound(f"macvlan parent link {parent} does not exist")
        nsfd = open_netns(netns) if netns else None  # '' = stays here (Docker moves it into the container)
        try:
            self._do(f"macvlan {name} on {parent}", rtnl.new_macvlan(name, pinfo.index, mode, nsfd, mtu, mac),
                     kind="macvlan")
        finally:
            if nsfd is not None:
                os.close(nsfd)

    def kind_supported(self, kind: str) -> bool:
        """Does this kernel know link kind `kind`? Probed with a link-add on loopback that
        fails (or is removed at once); the kernel answers EOPNOTSUPP for unknown kinds."""
        name = f"mprobe{os.getpid() % 100000}"
        try:
            self.nl.batch([rtnl.new_kind(name, kind, self._index("lo"))])
        except NetlinkError as e:
            return e.errno != errno.EOPNOTSUPP
        self.delete_link(name)
        return True

    def enslave(self, name: str, bridge: str, hairpin: bool = False) -> None:
        idx, bidx = self._index(name), self._index(bridge)
        reqs = [rtnl.set_link(idx, master=bidx)] + ([rtnl.set_hairpin(idx, True)] if hairpin else [])
        self._do(f"attach {name} to {bridge}", *reqs, rtnl.set_link(idx, up=True))

    def set_hairpin(self, name: str, on: bool) -> None:
        self._do(f"hairpin on {name}", rtnl.set_hairpin(self._index(name), on))

    def retire_link(self, name: str) -> bool:
        """Off its bridge, down, into the reap group; False if it is gone."""
        info = self.nl.link(name)
        if info is None:
            return False
        try:
            self.nl.batch([rtnl.set_link(info.index, up=False, master=0, group=REAP_GROUP)])
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise netlink_error(e, f"link {name}") from None
        return True

    def reap_links(self) -> bool:
        """Delete every retired link in one message; False if there was none."""
        try:
            return self.nl.delete_link(group=REAP_GROUP)
        except NetlinkError as e:
            raise netlink_error(e, "retired links") from None

    def retired_links(self) -> list[str]:
        return [i.name for i in self.nl.links(group=REAP_GROUP)]


# -- inside a sandbox: a netlink socket bound to its namespace ------------------------

class Sandbox:
    """A netlink socket in the namespace at `netns` (NotFound if it does not exist)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.nl = rtnl.Socket(netlink_socket(netns))

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.nl.close()

    def link(self, ifname: str) -> LinkInfo:
        info = self.nl.link(ifname)
        if info is None:
            raise NotFound(f"interface {ifname} missing in sandbox {self.netns}")
        return info


def sandbox_setup(netns: str, cfg: SandboxConfig) -> SandboxResult:
    """Configure `cfg.ifname` inside `netns` in one batch: ARP notify (the kernel announces the
    address when the link comes up), MAC and MTU when asked, addresses, up, routes. A default
    route the sandbox already has is kept unless `cfg.replace_default`: its first network
    keeps the default route, as in Docker."""
    with Sandbox(netns) as sb:
        link = sb.link(cfg.ifname)
        idx = link.index
        reqs = [rtnl.set_link(idx, mtu=cfg.mtu, address=cfg.mac,
                              arp_notify=any(a.version == 4 for a in cfg.addresses))]
        reqs += [rtnl.address(rtnl.RTM_NEWADDR, idx, a) for a in cfg.addresses]
        reqs.append(rtnl.set_link(idx, up=True))
        first_route = len(reqs)
        reqs += [rtnl.route(idx, r.dst, r.gw, replace=r.dst.prefixlen != 0 or cfg.replace_default) for r in cfg.routes]
        results = sb.nl.batch_results(reqs)
    installed: list[Route] = []
    for i, (_payloads, err) in enumerate(results):
        route = cfg.routes[i - first_route] if i >= first_route else None
        if route is not None and route.dst.prefixlen == 0 and err == errno.EEXIST and not cfg.replace_default:
            continue  # the sandbox keeps the default route it had
        if err:
            raise netlink_error(OSError(err, os.strerror(err)), f"sandbox interface {cfg.ifname}")
        if route is not None:
            installed.append(route)
    return SandboxResult(cfg.mac or link.mac, tuple(installed))


def sandbox_links(netns: str) -> list[str]:
    with Sandbox(netns) as sb:
        return [i.name for i in sb.nl.links()]


def sandbox_delete_link(netns: str, ifname: str) -> bool:
    """Delete `ifname` inside `netns`; fine when the netns or link is gone."""
    if not netns or not netns_exists(netns):
        return False
    try:
        with Sandbox(netns) as sb:
            info = sb.nl.link(ifname)
            return info is not None and sb.nl.delete_link(info.index)
    except (NotFound, NetlinkError):
        return False


def sandbox_describe(netns: str, ifname: str) -> dict:
    """MAC, MTU, up and global addresses of `ifname` in `netns` ({} if missing)."""
    with Sandbox(netns) as sb:
        info = sb.nl.link(ifname)
        if info is None:
            return {}
        return {"mac": info.mac, "mtu": info.mtu, "up": info.up,
                "addresses": [a for _, a in sb.nl.addresses(info.index)]}


def sandbox_set_loopback(netns: str, up: bool) -> bool:
    """Loopback up or down inside `netns`; returns whether it was up."""
    with Sandbox(netns) as sb:
        lo = sb.link("lo")
        if lo.up != up:
            sb.nl.batch([rtnl.set_link(lo.index, up=up)])
        return lo.up


def sandbox_addresses(netns: str) -> list[IPInterface]:
    with Sandbox(netns) as sb:
        return [ipaddress.ip_interface(a) for _, a in sb.nl.addresses()]

"""The real `Kernel` (dataplane/api.py): netlink for links, a netns helper for the work
inside sandboxes, nft for Muslin's table, iptables for DOCKER-USER, /proc for host facts.

Everything happens in the network namespace this process runs in (the host); the
process never switches its own namespace.
"""

from __future__ import annotations

import os
import subprocess
from typing import Iterable

from muslin.dataplane import hostnet, links, nft
from muslin.dataplane.nsexec import netns_exists
from muslin.firewall.antispoof import Guard
from muslin.firewall.state import FirewallState
from muslin.model.errors import Conflict, NotFound, Unavailable
from muslin.model.kernel import LinkInfo, SandboxConfig, SandboxResult
from muslin.model.types import IPInterface, IPNetwork

NETNS_DIR = "/run/netns"


class RealKernel:
    def __init__(self) -> None:
        self._host: links.Host | None = None

    @property
    def host(self) -> links.Host:
        if self._host is None:  # one netlink socket, opened on first use
            self._host = links.Host()
        return self._host

    def close(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None

    # -- links of the host --------------------------------------------------------------
    def link(self, name: str) -> LinkInfo | None:
        return self.host.link(name)

    def default_mtu(self) -> int:
        return self.host.default_mtu()

    def create_bridge(self, name: str, mtu: int, mac: str, alias: str) -> None:
        self.host.create_bridge(name, mtu, mac, alias)

    def set_link(self, name: str, mtu: int = 0, up: bool = True, promisc: bool | None = None) -> None:
        self.host.set_link(name, mtu, up, promisc)

    def add_address(self, name: str, addr: IPInterface) -> bool:
        return self.host.add_address(name, addr)

    def remove_address(self, name: str, addr: IPInterface) -> None:
        self.host.remove_address(name, addr)

    def delete_link(self, name: str) -> bool:
        return self.host.delete_link(name)

    def create_veth(self, name: str, peer: str, peer_netns: str, mtu: int, peer_mac: str = "", bridge: str = "",
                    hairpin: bool = False, mac: str = "") -> LinkInfo:
        return self.host.create_veth(name, peer, peer_netns, mtu, peer_mac, bridge, hairpin, mac)

    def enslave(self, name: str, bridge: str, hairpin: bool = False) -> None:
        self.host.enslave(name, bridge, hairpin)

    def set_hairpin(self, name: str, on: bool) -> None:
        self.host.set_hairpin(name, on)

    def create_macvlan(self, name: str, parent: str, mode: str, netns: str, mtu: int, mac: str = "") -> None:
        self.host.create_macvlan(name, parent, mode, netns, mtu, mac)

    def kind_supported(self, kind: str) -> bool:
        return self.host.kind_supported(kind)

    def retire_link(self, name: str) -> bool:
        return self.host.retire_link(name)

    def reap_links(self) -> bool:
        return self.host.reap_links()

    def retired_links(self) -> list[str]:
        return self.host.retired_links()

    # -- traffic control of host links ------------------------------------------------------
    def create_ifb(self, name: str) -> None:
        from muslin.dataplane import tc

        tc.create_ifb(self.host.nl, name)

    def tc_tbf(self, name: str, rate: int, burst: int) -> None:
        from muslin.dataplane import tc

        tc.set_tbf(name, rate, burst)

    def tc_redirect(self, name: str, ifb: str) -> None:
        from muslin.dataplane import tc

        tc.redirect_ingress(name, ifb)

    def tc_clear(self, name: str) -> bool:
        from muslin.dataplane import tc

        return tc.clear(name)

    def tc_limits(self, name: str) -> tuple[int, str]:
        from muslin.dataplane import tc

        return tc.limits(name)

    # -- network namespaces -------------------------------------------------------------
    def netns_exists(self, path: str) -> bool:
        return netns_exists(path)

    def same_netns(self, a: str, b: str) -> bool:
        try:
            sa, sb = os.stat(a), os.stat(b)
        except OSError:
            return False
        return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)

    def create_netns(self, name: str) -> str:
        path = f"{NETNS_DIR}/{name}"
        if netns_exists(path):
            raise Conflict(f"network namespace {name} already exists")
        _ip("netns", "add", name)
        try:
            links.sandbox_set_loopback(path, True)
        except BaseException:
            _ip("netns", "del", name, check=False)
            raise
        return path

    def delete_netns(self, name: str) -> bool:
        if not netns_exists(f"{NETNS_DIR}/{name}"):
            return False
        _ip("netns", "del", name)
        return True

    def sandbox_links(self, netns: str) -> list[str]:
        return links.sandbox_links(netns)

    def netns_resolv_conf(self, name: str, text: str | None) -> str | None:
        from muslin.dataplane.netnsconf import resolv_conf

        return resolv_conf(name, text)

    def sandbox_setup(self, netns: str, cfg: SandboxConfig) -> SandboxResult:
        return links.sandbox_setup(netns, cfg)

    def sandbox_delete_link(self, netns: str, ifname: str) -> bool:
        return links.sandbox_delete_link(netns, ifname)

    def sandbox_describe(self, netns: str, ifname: str) -> dict:
        return links.sandbox_describe(netns, ifname)

    def sandbox_set_loopback(self, netns: str, up: bool) -> bool:
        return links.sandbox_set_loopback(netns, up)

    def sandbox_addresses(self, netns: str) -> list[IPInterface]:
        return links.sandbox_addresses(netns)

    # -- firewall ---------------------------------------------------------------------------
    def firewall_owner(self) -> str | None:
        return nft.owner()

    def firewall_sync(self, state: FirewallState, owner: str) -> dict[str, str]:
        changed: dict[str, str] = {}
        nft.sync(state, owner, changed)
        return changed

    def restore_sysctls(self, previous: dict[str, str]) -> None:
        nft.apply_sysctls(previous)

    def docker_user(self, owner: str, bridges: Iterable[str], only: Iterable[str] | None = None) -> None:
        from muslin.dataplane.docker_user import DockerUserRules

        DockerUserRules().reconcile(owner, bridges, only)

    # -- anti-spoofing and network policy --------------------------------------------------
    def firewall_guard(self, add: Iterable[Guard], remove: Iterable[Guard]) -> None:
        from muslin.dataplane import guard_nft
        from muslin.dataplane.nslock import netns_lock

        with netns_lock("nft"):
            guard_nft.change(add, remove)

    def firewall_counters(self) -> dict[str, dict[str, int]]:
        from muslin.dataplane import guard_nft, policy_nft

        return {**policy_nft.drop_counters(), "spoof": guard_nft.counters()}

    def protocol_supported(self, protocol: str) -> bool:
        return hostnet.protocol_supported(protocol)

    # -- services ---------------------------------------------------------------------------
    def services_apply(self, changes, owner: str) -> None:  # type: ignore[no-untyped-def]
        from muslin.dataplane import nft_services

        nft_services.apply(changes, owner)

    def services_resync(self, ports, vips, local, owner: str) -> None:  # type: ignore[no-untyped-def]
        from muslin.dataplane import nft_services

        nft_services.resync(ports, vips, local, owner)

    def services_marked(self) -> bool:
        from muslin.dataplane import nft_services

        return nft_services.marked()

    def conntrack_flush(self, protocol: str, vip, port: int, backend) -> int:  # type: ignore[no-untyped-def]
        from muslin.dataplane import nft_services

        return nft_services.conntrack_flush(protocol, vip, port, backend)

    # -- host facts -----------------------------------------------------------------------
    def host_routes(self) -> list[IPNetwork]:
        return hostnet.host_routes()

    def port_free(self, protocol: str, host_ip: str, port: int) -> bool:
        return hostnet.port_free(protocol, host_ip, port)


def _ip(*args: str, check: bool = True) -> None:
    try:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"ip {' '.join(args)}: {e}") from None
    if check and r.returncode != 0:
        msg = " ".join(r.stderr.split()) or f"exit status {r.returncode}"
        if "No such file" in msg:
            raise NotFound(f"ip {' '.join(args)}: {msg}")
        raise Unavailable(f"ip {' '.join(args)}: {msg}")

"""The one I/O boundary of the control layer: what drivers and use-cases ask of the kernel.

`Kernel` is implemented by `muslin.dataplane.kernel.RealKernel` (netlink, nft, iptables, in
the namespace the process runs in: the host) and by `muslin.dataplane.fake.FakeKernel`
(in memory, able to fail at any call) for tests without root. Pure: typing only.

Names are interface names; `netns` arguments are paths (/run/netns/x, /proc/PID/ns/net).
Every delete is idempotent: deleting what is gone succeeds and returns False.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from muslin.firewall.antispoof import Guard
from muslin.firewall.services import ServiceChanges, SvcPort
from muslin.firewall.state import FirewallState
from muslin.model.kernel import LinkInfo, SandboxConfig, SandboxResult
from muslin.model.types import IPAddress, IPInterface, IPNetwork


class Kernel(Protocol):
    # -- links of the host --------------------------------------------------------------
    def link(self, name: str) -> LinkInfo | None: ...

    def default_mtu(self) -> int:
        """MTU of the link holding the default route, else 1500."""

    def create_bridge(self, name: str, mtu: int, mac: str, alias: str) -> None:
        """A new bridge, up, with that MAC (fixed: it never follows its ports) and alias."""

    def set_link(self, name: str, mtu: int = 0, up: bool = True, promisc: bool | None = None) -> None: ...

    def add_address(self, name: str, addr: IPInterface) -> bool:
        """True if added, False if the link already had it."""

    def remove_address(self, name: str, addr: IPInterface) -> None: ...

    def delete_link(self, name: str) -> bool: ...

    def create_veth(self, name: str, peer: str, peer_netns: str, mtu: int, peer_mac: str = "", bridge: str = "",
                    hairpin: bool = False, mac: str = "") -> LinkInfo:
        """A veth pair: `name` here with MAC `mac` (enslaved to `bridge`, in hairpin mode when
        asked, and up, when a bridge is given), `peer` in `peer_netns` ('' = here too) with MAC
        `peer_mac` ('' = the kernel picks). Returns `name`'s info."""

    def enslave(self, name: str, bridge: str, hairpin: bool = False) -> None:
        """Attach `name` to `bridge` and bring it up."""

    def set_hairpin(self, name: str, on: bool) -> None: ...

    def create_macvlan(self, name: str, parent: str, mode: str, netns: str, mtu: int, mac: str = "") -> None: ...

    def kind_supported(self, kind: str) -> bool:
        """Does this kernel know link kind `kind`?"""

    def retire_link(self, name: str) -> bool:
        """Take a link off its bridge, down, into the reap group (deleting it costs a
        synchronous rcu_barrier: ~20 ms); False if it is gone."""

    def reap_links(self) -> bool:
        """Delete every retired link in one message; False if there was none."""

    def retired_links(self) -> list[str]: ...

    # -- traffic control of host links (bandwidth limits) -------------------------------
    def create_ifb(self, name: str) -> None:
        """A new ifb device, up (undo: delete_link)."""

    def tc_tbf(self, name: str, rate: int, burst: int) -> None:
        """A tbf as the root qdisc of `name`: `rate` bit/s, `burst` bits (undo: tc_clear)."""

    def tc_redirect(self, name: str, ifb: str) -> None:
        """What arrives on `name` leaves through `ifb` (undo: tc_clear)."""

    def tc_clear(self, name: str) -> bool:
        """Remove the root and ingress qdiscs of `name`; False if it had none or is gone."""

    def tc_limits(self, name: str) -> tuple[int, str]:
        """(rate of the root tbf of `name` in bit/s or 0, the ifb its ingress goes to or '')."""

    # -- network namespaces and what is inside them -----------------------------------
    def netns_exists(self, path: str) -> bool: ...

    def same_netns(self, a: str, b: str) -> bool:
        """Are the namespaces at these two paths the same one?"""

    def create_netns(self, name: str) -> str:
        """A named namespace /run/netns/NAME with loopback up; returns its path."""

    def delete_netns(self, name: str) -> bool: ...

    def sandbox_links(self, netns: str) -> list[str]:
        """Names of the links inside the namespace."""

    def sandbox_setup(self, netns: str, cfg: SandboxConfig) -> SandboxResult: ...

    def sandbox_delete_link(self, netns: str, ifname: str) -> bool:
        """Fine when the namespace or the link is gone."""

    def sandbox_describe(self, netns: str, ifname: str) -> dict:
        """{'mac', 'mtu', 'up', 'addresses'} of the link, {} when missing."""

    def sandbox_set_loopback(self, netns: str, up: bool) -> bool:
        """Loopback up or down; returns whether it was up."""

    def sandbox_addresses(self, netns: str) -> list[IPInterface]: ...

    def netns_resolv_conf(self, name: str, text: str | None) -> str | None:
        """Write /etc/netns/NAME/resolv.conf (what `ip netns exec NAME` shows as
        /etc/resolv.conf), or remove it with None; returns what was there (None: nothing)."""

    # -- firewall: Muslin's one nftables table, and Docker's DOCKER-USER hook ---------
    def firewall_owner(self) -> str | None:
        """The owner mark of the table `inet muslin` (None: there is no table)."""

    def firewall_sync(self, state: FirewallState, owner: str) -> dict[str, str]:
        """Make the table match `state` (Conflict if another owner holds it) and set the
        sysctls it needs; returns the previous value of each sysctl it changed."""

    def restore_sysctls(self, previous: dict[str, str]) -> None:
        """Put back what firewall_sync changed (an undo)."""

    def docker_user(self, owner: str, bridges: Iterable[str], only: Iterable[str] | None = None) -> None:
        """Muslin's accept pairs in DOCKER-USER (when that chain exists) are exactly `bridges`,
        among the rules of `owner`; with `only`, rules of other bridges are left alone."""

    # -- anti-spoofing and network policy (firewall/antispoof.py, firewall/policy.py) -----
    def firewall_guard(self, add: Iterable[Guard], remove: Iterable[Guard]) -> None:
        """Add or remove endpoints' anti-spoofing elements in one batch, without a full sync
        (flat cost at any number of endpoints); NotFound when the table `bridge muslin` is
        not there (nothing changed: the caller syncs everything)."""

    def firewall_counters(self) -> dict[str, dict[str, int]]:
        """Packets dropped by network policy, per drop set and address
        ({"in_drop4": {"10.0.0.5": 12}, ...}), and by each anti-spoofing rule ({"spoof": {rule: n}})."""

    def protocol_supported(self, protocol: str) -> bool:
        """Can this kernel carry the protocol ("sctp": is there an SCTP socket)?"""

    # -- services: virtual IPs in Muslin's table (firewall/services.py) -----------------
    def services_apply(self, changes: ServiceChanges, owner: str) -> None:
        """One batch of service changes (Conflict if another owner holds the table, NotFound
        if there is no table)."""

    def services_resync(self, ports: Iterable[SvcPort], vips: Iterable[IPAddress], local: Iterable[IPAddress],
                        owner: str) -> None:
        """The table's services become exactly these (observed, then one batch)."""

    def services_marked(self) -> bool:
        """Has a full service sync run since the table was last made (or replaced)?"""

    def conntrack_flush(self, protocol: str, vip: IPAddress, port: int, backend: IPAddress) -> int:
        """Forget the connections to vip:port/protocol DNATed to `backend`; returns how many."""

    # -- host facts ---------------------------------------------------------------------
    def host_routes(self) -> list[IPNetwork]:
        """Non-default routes of the main table."""

    def port_free(self, protocol: str, host_ip: str, port: int) -> bool:
        """Nothing on the host is bound to host_ip:port."""

    def close(self) -> None: ...

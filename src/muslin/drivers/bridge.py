"""bridge: one Linux bridge per network, a veth pair per endpoint.

Muslin marks a bridge it makes with the alias `muslin:<network>` and a fixed MAC chosen at
network creation (kept in the network record), and deletes only a bridge that carries its
mark. An existing bridge is used only when the network asks for it (`reuse_bridge`); then
Muslin removes on teardown exactly the addresses it added, and never the bridge.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from muslin.drivers.base import Addr, Made
from muslin.drivers.common import check_sandbox, sandbox_routes, taken_ifname
from muslin.model import names
from muslin.model.errors import Conflict, Invalid, NotFound
from muslin.model.kernel import SandboxConfig
from muslin.model.types import AttachRequest, Endpoint, Interface, Network
from muslin.plan import Step

if TYPE_CHECKING:
    from muslin.dataplane.api import Kernel

ADDRESS = "address:"  # a `made` entry: an address Muslin put on a bridge it did not make
PROMISC = "promisc"  # a `made` entry: Muslin turned on promiscuous mode of a bridge it did not make


class BridgeDriver:
    name = "bridge"
    uses_ipam = True
    needs_subnet = True
    bridged = True
    modes: tuple[str, ...] = ()
    options: tuple[str, ...] = ("promisc", "forceAddress")

    def check(self, net: Network) -> Network:
        net = net.evolve(bridge=net.bridge or names.bridge_name(net.name))
        names.check_bridge_name(net.bridge)
        if not net.range_sets:
            raise Invalid(f"network {net.name}: the bridge driver needs at least one subnet")
        if net.mtu and not 68 <= net.mtu <= 65535:
            raise Invalid(f"network {net.name}: mtu {net.mtu} is outside 68..65535")
        if net.parent:
            raise Invalid(f"network {net.name}: a parent link is only for the macvlan driver")
        return net

    def preflight(self, k: Kernel, net: Network) -> None:
        info = k.link(net.bridge)
        if info is None or self._ours(k, net):
            return
        if info.kind != "bridge":
            raise Conflict(f"link {net.bridge} exists and is a {info.kind or 'plain device'}, not a bridge: "
                           "choose another bridge name")
        if not net.reuse_bridge:
            raise Conflict(f"bridge {net.bridge} exists and was not made by Muslin: ask to reuse it "
                           "(muslin network create --reuse-bridge, CNI reuseBridge, -o muslin.reuse_bridge=true) "
                           "or choose another bridge name")

    def _ours(self, k: Kernel, net: Network) -> bool:
        info = k.link(net.bridge)
        return info is not None and info.kind == "bridge" and info.alias == names.bridge_alias(net.name)

    def gateways(self, net: Network) -> list:
        return net.gateways() if net.is_gateway or net.is_default_gateway else []

    def ready(self, k: Kernel, net: Network) -> bool:
        info = k.link(net.bridge)
        return info is not None and info.up and info.kind == "bridge"

    def setup_steps(self, k: Kernel, net: Network, made: list[str]) -> list[Step]:
        def make() -> bool:
            info = k.link(net.bridge)
            if info is None:
                k.create_bridge(net.bridge, net.mtu or k.default_mtu(), net.bridge_mac, names.bridge_alias(net.name))
                return True
            if not info.up:
                k.set_link(net.bridge, up=True)
            return False

        def unmake(created: bool) -> None:
            if created:
                k.delete_link(net.bridge)

        def promisc() -> bool:
            if dict(net.options).get("promisc") != "true":
                return False
            k.set_link(net.bridge, promisc=True)
            if not self._ours(k, net):
                made.append(PROMISC)
            return True

        steps = [Step(f"bridge {net.bridge}", make, unmake, phase="bridge"),
                 Step(f"bridge {net.bridge} promiscuous", promisc,
                      lambda done: done and k.set_link(net.bridge, promisc=False), phase="bridge promiscuous")]
        for gw in self.gateways(net):
            def add(gw=gw) -> bool:
                added = k.add_address(net.bridge, gw)
                if added and not self._ours(k, net):
                    made.append(f"{ADDRESS}{gw}")
                return added

            def remove(added: bool, gw=gw) -> None:
                if added:
                    k.remove_address(net.bridge, gw)

            steps.append(Step(f"bridge address {gw}", add, remove, phase="bridge address"))
        return steps

    def teardown(self, k: Kernel, net: Network) -> None:
        info = k.link(net.bridge)
        if info is None:
            return
        if self._ours(k, net):
            k.delete_link(net.bridge)
            return
        if PROMISC in net.made:
            k.set_link(net.bridge, up=info.up, promisc=False)
        for m in net.made:  # a bridge Muslin reused: only what it added goes
            if m.startswith(ADDRESS):
                k.remove_address(net.bridge, ipaddress.ip_interface(m[len(ADDRESS):]))

    def attach_steps(self, k: Kernel, net: Network, req: AttachRequest, addrs: list[Addr], out: Made) -> list[Step]:
        bridge = k.link(net.bridge)
        if bridge is None:
            raise NotFound(f"bridge {net.bridge} of network {net.name} is missing")
        out.mtu = req.mtu or net.mtu or bridge.mtu
        out.host_ifname = req.host_ifname or names.host_ifname(net.name, req.endpoint_id)
        peer = req.ifname if req.netns else names.peer_ifname(net.name, req.endpoint_id)
        # Muslin chooses both MACs: nothing is looked up after the veth is made
        peer_mac, host_mac = req.mac or names.random_mac(), names.random_mac()
        hairpin = net.hairpin or bool(req.ports)

        def veth() -> None:
            def create() -> None:
                k.create_veth(out.host_ifname, peer, req.netns, out.mtu, peer_mac, net.bridge, hairpin, host_mac)

            try:
                create()
            except Conflict:
                leftovers = [n for n in (out.host_ifname, "" if req.netns else peer) if n and k.link(n)]
                if not leftovers:
                    raise taken_ifname(k, req, f"veth {out.host_ifname}") from None
                for name in leftovers:  # of a crashed attach of this endpoint: ours by their names
                    k.delete_link(name)
                create()

        def sandbox() -> None:
            routes = tuple(sandbox_routes(net, addrs))
            out.mac, out.routes = peer_mac, routes
            if req.netns:  # (its MAC and MTU came with the veth)
                out.routes = k.sandbox_setup(req.netns, SandboxConfig(
                    req.ifname, tuple(a for a, _ in addrs), routes, replace_default=req.default_route)).routes
            else:  # Docker: the peer waits on the host, unconfigured, until Docker moves it
                out.peer = peer
            out.interfaces = [Interface(net.bridge, net.bridge_mac or bridge.mac),
                              Interface(out.host_ifname, host_mac, out.mtu),
                              Interface(req.ifname, out.mac, out.mtu, req.netns)]

        # Hairpin lets a container reach its own published port: with br_netfilter the
        # DNATed frame leaves through the port it came in on.
        return [Step(f"veth {out.host_ifname}", veth, lambda _: k.delete_link(out.host_ifname), phase="veth"),
                Step(f"sandbox {req.ifname}", sandbox, phase="sandbox")]

    def detach(self, k: Kernel, net: Network, ep: Endpoint, retire: bool = False) -> bool:
        # Deleting the host end removes the sandbox end too, wherever it is; retired, it is
        # off the bridge and down at once, and goes with the next reap.
        if retire and ep.host_ifname and k.retire_link(ep.host_ifname):
            return True
        if not k.delete_link(ep.host_ifname) and ep.netns:
            k.sandbox_delete_link(ep.netns, ep.ifname)
        return False

    def check_endpoint(self, k: Kernel, net: Network, ep: Endpoint) -> None:
        bridge = k.link(net.bridge)
        if bridge is None:
            raise NotFound(f"bridge {net.bridge} of network {net.name} is missing")
        info = k.link(ep.host_ifname)
        if info is None:
            raise NotFound(f"host interface {ep.host_ifname} of {ep.endpoint_id} is missing")
        if info.master != bridge.index:
            raise NotFound(f"host interface {ep.host_ifname} is not attached to {net.bridge}")
        if ep.netns:
            check_sandbox(k, ep)

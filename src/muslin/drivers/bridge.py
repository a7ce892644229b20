"""bridge: one Linux bridge per network, a veth pair per endpoint."""

from __future__ import annotations

import ipaddress

from muslin.dataplane import links
from muslin.dataplane.links import Host, SandboxConfig
from muslin.drivers.base import Addr
from muslin.drivers.common import make_endpoint, require_free_ifname, sandbox_routes
from muslin.model import names
from muslin.model.errors import Invalid, MuslinError, NotFound
from muslin.model.types import AttachRequest, Endpoint, Network


class BridgeDriver:
    name = "bridge"
    uses_ipam = True

    def validate(self, net: Network) -> None:
        names.check_ifname(net.bridge, "bridge name")
        if not net.range_sets:
            raise Invalid(f"network {net.name}: the bridge driver needs at least one subnet")
        if net.mtu and not 68 <= net.mtu <= 65535:
            raise Invalid(f"network {net.name}: mtu {net.mtu} is outside 68..65535")

    def mtu(self, host: Host, net: Network) -> int:
        return net.mtu or host.default_mtu()

    def bridge_addresses(self, net: Network) -> list:
        return net.gateways() if net.is_gateway or net.is_default_gateway else []

    def network_ready(self, host: Host, net: Network) -> bool:
        info = host.link(net.bridge)
        return info is not None and info.up and info.kind == "bridge"

    def setup_network(self, host: Host, net: Network) -> None:
        gws = self.bridge_addresses(net)
        host.ensure_bridge(net.bridge, self.mtu(host, net), gws)
        host.enable_forwarding(v4=any(g.version == 4 for g in gws), v6=any(g.version == 6 for g in gws))

    def teardown_network(self, host: Host, net: Network) -> None:
        host.delete_link(net.bridge)

    def attach(self, host: Host, net: Network, req: AttachRequest, addrs: list[Addr]) -> Endpoint:
        require_free_ifname(req)
        mtu = req.mtu or self.mtu(host, net)
        host_if = req.host_ifname or names.host_ifname(net.name, req.endpoint_id)
        peer = req.ifname if req.netns else names.peer_ifname(net.name, req.endpoint_id)
        host.delete_link(host_if)  # a leftover of a crashed attach: ours by its name
        host.create_veth(host_if, peer, req.netns, mtu, peer_mac="" if req.netns else req.mac)
        try:
            # Hairpin lets a container reach its own published port: with br_netfilter
            # the DNATed frame leaves through the port it came in on.
            host.enslave(host_if, net.bridge, hairpin=net.hairpin or bool(req.ports))
            routes = sandbox_routes(net, addrs)
            if req.netns:
                mac = links.sandbox_setup(req.netns, SandboxConfig(req.ifname, tuple(a for a, _ in addrs),
                                                                   tuple(routes), mtu, req.mac))
                return make_endpoint(net, req, addrs, host_if, mac, routes, mtu)
            info = host.link(peer)
            if info is None:
                raise NotFound(f"veth peer {peer} vanished")
            return make_endpoint(net, req, addrs, host_if, info.mac, routes, mtu, peer=peer)
        except BaseException:
            host.delete_link(host_if)
            raise

    def detach(self, host: Host, net: Network, ep: Endpoint) -> None:
        # Deleting the host end removes the sandbox end too, wherever it is.
        if not host.delete_link(ep.host_ifname) and ep.netns:
            links.sandbox_delete_link(ep.netns, ep.ifname)

    def check(self, host: Host, net: Network, ep: Endpoint) -> None:
        info = host.link(ep.host_ifname)
        bridge = host.link(net.bridge)
        if bridge is None:
            raise NotFound(f"bridge {net.bridge} of network {net.name} is missing")
        if info is None:
            raise NotFound(f"host interface {ep.host_ifname} of {ep.endpoint_id} is missing")
        if info.master != bridge.index:
            raise NotFound(f"host interface {ep.host_ifname} is not attached to {net.bridge}")
        if ep.netns:
            check_sandbox(ep)


def check_sandbox(ep: Endpoint) -> None:
    try:
        seen = links.sandbox_describe(ep.netns, ep.ifname)
    except MuslinError as e:
        raise NotFound(f"sandbox {ep.netns}: {e}") from None
    if not seen:
        raise NotFound(f"interface {ep.ifname} is missing in {ep.netns}")
    have = {ipaddress.ip_interface(a) for a in seen["addresses"]}
    missing = [str(a) for a in ep.addresses if a not in have]
    if missing:
        raise NotFound(f"interface {ep.ifname} in {ep.netns} lacks {', '.join(missing)}")
    if ep.mac and seen["mac"].lower() != ep.mac.lower():
        raise NotFound(f"interface {ep.ifname} has MAC {seen['mac']}, expected {ep.mac}")

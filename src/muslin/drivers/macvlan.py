"""macvlan: the sandbox gets a macvlan device on a parent link (bridge mode)."""

from __future__ import annotations

from muslin.dataplane import links
from muslin.dataplane.links import Host, SandboxConfig
from muslin.drivers.base import Addr
from muslin.drivers.bridge import check_sandbox
from muslin.drivers.common import make_endpoint, require_free_ifname, sandbox_routes
from muslin.model import names
from muslin.model.errors import Invalid, NotFound
from muslin.model.types import AttachRequest, Endpoint, Network

MODES = ("bridge", "private", "vepa", "passthru")


class MacvlanDriver:
    name = "macvlan"
    uses_ipam = True

    def validate(self, net: Network) -> None:
        if not net.parent:
            raise Invalid(f"network {net.name}: macvlan needs a parent link ('master' / -o parent=)")
        names.check_ifname(net.parent, "macvlan parent")
        if net.mode not in MODES:
            raise Invalid(f"network {net.name}: macvlan mode {net.mode!r} is not one of {', '.join(MODES)}")

    def network_ready(self, host: Host, net: Network) -> bool:
        return True

    def setup_network(self, host: Host, net: Network) -> None:
        if host.index(net.parent) is None:
            raise NotFound(f"network {net.name}: macvlan parent link {net.parent} does not exist")

    def teardown_network(self, host: Host, net: Network) -> None:
        return None

    def attach(self, host: Host, net: Network, req: AttachRequest, addrs: list[Addr]) -> Endpoint:
        require_free_ifname(req)
        parent = host.link(net.parent)
        if parent is None:
            raise NotFound(f"macvlan parent link {net.parent} does not exist")
        mtu = req.mtu or net.mtu or parent.mtu
        if not req.netns:  # Docker: made on the host, unconfigured; Docker moves it into the sandbox
            peer = names.peer_ifname(net.name, req.endpoint_id)
            host.delete_link(peer)  # a leftover of a crashed attach: ours by its name
            host.create_macvlan(peer, net.parent, net.mode, "", mtu, req.mac)
            info = host.link(peer)
            if info is None:
                raise NotFound(f"macvlan {peer} vanished")
            return make_endpoint(net, req, addrs, "", info.mac, sandbox_routes(net, addrs), mtu, peer=peer)
        host.create_macvlan(req.ifname, net.parent, net.mode, req.netns, mtu, req.mac)
        try:
            routes = sandbox_routes(net, addrs)
            mac = links.sandbox_setup(req.netns, SandboxConfig(req.ifname, tuple(a for a, _ in addrs),
                                                               tuple(routes), 0, ""))
            return make_endpoint(net, req, addrs, "", mac, routes, mtu)
        except BaseException:
            links.sandbox_delete_link(req.netns, req.ifname)
            raise

    def detach(self, host: Host, net: Network, ep: Endpoint) -> None:
        if not ep.netns:  # Docker: back on the host after Leave (or gone with its sandbox)
            host.delete_link(dict(ep.extra).get("peer") or names.peer_ifname(net.name, ep.endpoint_id))
            return
        links.sandbox_delete_link(ep.netns, ep.ifname)

    def check(self, host: Host, net: Network, ep: Endpoint) -> None:
        check_sandbox(ep)

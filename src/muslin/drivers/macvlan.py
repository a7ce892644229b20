"""macvlan: the sandbox gets a macvlan device on a parent link."""

from __future__ import annotations

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


class MacvlanDriver:
    name = "macvlan"
    uses_ipam = True
    needs_subnet = False  # addresses may come from elsewhere (Docker's IPAM, a CNI IPAM plugin)
    bridged = False
    modes = ("bridge", "private", "vepa", "passthru")
    options: tuple[str, ...] = ()

    def check(self, net: Network) -> Network:
        if not net.parent:
            raise Invalid(f"network {net.name}: macvlan needs a parent link ('master' / --parent / muslin.parent)")
        names.check_ifname(net.parent, "macvlan parent")
        if net.mode not in self.modes:
            raise Invalid(f"network {net.name}: macvlan mode {net.mode!r} is not one of {', '.join(self.modes)}")
        if net.bridge:
            raise Invalid(f"network {net.name}: a bridge name is only for the bridge driver")
        return net

    def preflight(self, k: Kernel, net: Network) -> None:
        if k.link(net.parent) is None:
            raise NotFound(f"network {net.name}: macvlan parent link {net.parent} does not exist")

    def ready(self, k: Kernel, net: Network) -> bool:
        return True

    def gateways(self, net: Network) -> list:
        return []

    def setup_steps(self, k: Kernel, net: Network, made: list[str]) -> list[Step]:
        return []

    def teardown(self, k: Kernel, net: Network) -> None:
        return None

    def attach_steps(self, k: Kernel, net: Network, req: AttachRequest, addrs: list[Addr], out: Made) -> list[Step]:
        parent = k.link(net.parent)
        if parent is None:
            raise NotFound(f"macvlan parent link {net.parent} does not exist")
        out.mtu = req.mtu or net.mtu or parent.mtu
        routes = tuple(sandbox_routes(net, addrs))
        if not req.netns:  # Docker: made on the host, unconfigured; Docker moves it into the sandbox
            peer = names.peer_ifname(net.name, req.endpoint_id)

            def make_peer() -> None:
                k.delete_link(peer)  # a leftover of a crashed attach: ours by its name
                k.create_macvlan(peer, net.parent, net.mode, "", out.mtu, req.mac)
                info = k.link(peer)
                if info is None:
                    raise NotFound(f"macvlan {peer} vanished")
                out.mac, out.peer, out.routes = info.mac, peer, routes
                out.interfaces = [Interface(net.parent, parent.mac), Interface(req.ifname, out.mac, out.mtu)]

            return [Step(f"macvlan {peer}", make_peer, lambda _: k.delete_link(peer), phase="macvlan")]

        def make() -> None:
            try:
                k.create_macvlan(req.ifname, net.parent, net.mode, req.netns, out.mtu, req.mac)
            except Conflict:
                raise taken_ifname(k, req, f"macvlan {req.ifname}") from None

        def configure() -> None:
            res = k.sandbox_setup(req.netns, SandboxConfig(req.ifname, tuple(a for a, _ in addrs), routes, 0, "",
                                                           req.default_route))
            out.mac, out.routes = res.mac, res.routes
            out.interfaces = [Interface(net.parent, parent.mac), Interface(req.ifname, out.mac, out.mtu, req.netns)]

        return [Step(f"macvlan {req.ifname}", make, lambda _: k.sandbox_delete_link(req.netns, req.ifname),
                     phase="macvlan"),
                Step(f"sandbox {req.ifname}", configure, phase="sandbox")]

    def detach(self, k: Kernel, net: Network, ep: Endpoint, retire: bool = False) -> bool:
        if not ep.netns:  # Docker: back on the host after Leave (or gone with its sandbox)
            k.delete_link(ep.peer or names.peer_ifname(net.name, ep.endpoint_id))
        else:
            k.sandbox_delete_link(ep.netns, ep.ifname)
        return False

    def check_endpoint(self, k: Kernel, net: Network, ep: Endpoint) -> None:
        check_sandbox(k, ep)

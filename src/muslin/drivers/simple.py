"""host, none and container: drivers that create no links.

- host: the sandbox uses the host's namespace; nothing to make.
- none: a sandbox with only loopback, brought up.
- container: the sandbox joins another sandbox's namespace (`container` option =
  that namespace's path); the endpoint reports that namespace's addresses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from muslin.drivers.base import Addr, Made
from muslin.model.errors import Invalid, NotFound
from muslin.model.types import AttachRequest, Endpoint, Interface, Network
from muslin.plan import Step

if TYPE_CHECKING:
    from muslin.dataplane.api import Kernel


class _NoLinks:
    name = ""
    uses_ipam = False
    needs_subnet = False
    bridged = False
    modes: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def check(self, net: Network) -> Network:
        if net.range_sets:
            raise Invalid(f"network {net.name}: the {self.name} driver gives no addresses; drop the subnets")
        return net

    def preflight(self, k: Kernel, net: Network) -> None:
        return None

    def ready(self, k: Kernel, net: Network) -> bool:
        return True

    def gateways(self, net: Network) -> list:
        return []

    def setup_steps(self, k: Kernel, net: Network, made: list[str]) -> list[Step]:
        return []

    def teardown(self, k: Kernel, net: Network) -> None:
        return None

    def attach_steps(self, k: Kernel, net: Network, req: AttachRequest, addrs: list[Addr], out: Made) -> list[Step]:
        return []

    def detach(self, k: Kernel, net: Network, ep: Endpoint, retire: bool = False) -> bool:
        return False

    def check_endpoint(self, k: Kernel, net: Network, ep: Endpoint) -> None:
        return None


class HostDriver(_NoLinks):
    name = "host"


class NoneDriver(_NoLinks):
    name = "none"

    def attach_steps(self, k: Kernel, net: Network, req: AttachRequest, addrs: list[Addr], out: Made) -> list[Step]:
        if not req.netns:
            return []
        return [Step("loopback up", lambda: k.sandbox_set_loopback(req.netns, True),
                     lambda was_up: was_up or k.sandbox_set_loopback(req.netns, False))]

    def check_endpoint(self, k: Kernel, net: Network, ep: Endpoint) -> None:
        if ep.netns and not k.netns_exists(ep.netns):
            raise NotFound(f"network namespace {ep.netns} does not exist")


class ContainerDriver(_NoLinks):
    name = "container"
    options = ("container",)

    def check(self, net: Network) -> Network:
        super().check(net)
        if not dict(net.options).get("container"):
            raise Invalid(f"network {net.name}: the container driver needs option 'container' (a netns path)")
        return net

    def attach_steps(self, k: Kernel, net: Network, req: AttachRequest, addrs: list[Addr], out: Made) -> list[Step]:
        target = dict(net.options)["container"]

        def join() -> None:
            if not k.netns_exists(target):
                raise NotFound(f"container namespace {target} does not exist")
            out.interfaces = [Interface(req.ifname, sandbox=target)]
            out.addresses = tuple(k.sandbox_addresses(target))

        return [Step("join container", join)]

"""host, none and container: drivers that create no links.

- host: the sandbox uses the host's namespace; nothing to make.
- none: a sandbox with only loopback, brought up.
- container: the sandbox joins another sandbox's namespace (`container` option =
  that namespace's path); the endpoint reports that namespace's addresses.
"""

from __future__ import annotations

from muslin.dataplane import links
from muslin.dataplane.links import Host
from muslin.drivers.base import Addr
from muslin.model.errors import Invalid, NotFound
from muslin.model.types import AttachRequest, Endpoint, Network


def _endpoint(net: Network, req: AttachRequest, addresses=()) -> Endpoint:
    return Endpoint(network=net.name, endpoint_id=req.endpoint_id, container_id=req.container_id,
                    ifname=req.ifname, netns=req.netns, host_ifname="", mac="", addresses=tuple(addresses))


class _NoLinks:
    uses_ipam = False

    def validate(self, net: Network) -> None:
        return None

    def network_ready(self, host: Host, net: Network) -> bool:
        return True

    def setup_network(self, host: Host, net: Network) -> None:
        return None

    def teardown_network(self, host: Host, net: Network) -> None:
        return None

    def detach(self, host: Host, net: Network, ep: Endpoint) -> None:
        return None

    def check(self, host: Host, net: Network, ep: Endpoint) -> None:
        return None


class HostDriver(_NoLinks):
    name = "host"

    def attach(self, host: Host, net: Network, req: AttachRequest, addrs: list[Addr]) -> Endpoint:
        return _endpoint(net, req)


class NoneDriver(_NoLinks):
    name = "none"

    def attach(self, host: Host, net: Network, req: AttachRequest, addrs: list[Addr]) -> Endpoint:
        if req.netns:
            links.sandbox_loopback_up(req.netns)
        return _endpoint(net, req)

    def check(self, host: Host, net: Network, ep: Endpoint) -> None:
        if ep.netns and not links.netns_exists(ep.netns):
            raise NotFound(f"network namespace {ep.netns} does not exist")


class ContainerDriver(_NoLinks):
    name = "container"

    def validate(self, net: Network) -> None:
        if not dict(net.options).get("container"):
            raise Invalid(f"network {net.name}: the container driver needs option 'container' (a netns path)")

    def attach(self, host: Host, net: Network, req: AttachRequest, addrs: list[Addr]) -> Endpoint:
        target = dict(net.options)["container"]
        if not links.netns_exists(target):
            raise NotFound(f"container namespace {target} does not exist")
        return _endpoint(net, req, links.sandbox_addresses(target))

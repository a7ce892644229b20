"""The persistent netns helper muslind uses (nsexec.use_helper): same results and errors
as the fork-per-call path, and it always goes back to its own namespace."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from muslin.dataplane import links, nsexec
from muslin.model.errors import NotFound

pytestmark = pytest.mark.kernel


@pytest.fixture
def helper():
    nsexec.use_helper()
    try:
        yield
    finally:
        nsexec.use_helper(False)


def test_helper_works_in_each_namespace_and_returns_home(netns, helper):
    a, b = netns("a"), netns("b")
    a.run("ip", "addr", "add", "10.201.1.1/24", "dev", "lo")
    b.run("ip", "addr", "add", "10.201.2.1/24", "dev", "lo")
    for _ in range(3):  # alternate: every call must land in its own namespace
        assert ipaddress.ip_interface("10.201.1.1/24") in links.sandbox_addresses(a.path)
        assert ipaddress.ip_interface("10.201.2.1/24") not in links.sandbox_addresses(a.path)
        assert ipaddress.ip_interface("10.201.2.1/24") in links.sandbox_addresses(b.path)
    # a function run there sees that namespace (/proc/self/net is the caller's netns)
    assert "mt-" not in nsexec.run_in_netns(a.path, Path("/proc/self/net/dev").read_text)
    a.run("ip", "link", "add", "mtx0", "type", "veth", "peer", "name", "mtx1")
    assert "mtx0" in nsexec.run_in_netns(a.path, Path("/proc/self/net/dev").read_text)
    assert "mtx0" not in nsexec.run_in_netns("/proc/self/ns/net", Path("/proc/self/net/dev").read_text)


def test_helper_errors_are_the_same(netns, helper):
    a = netns("a")
    with pytest.raises(NotFound, match="does not exist"):
        nsexec.run_in_netns("/run/netns/mt-none-000000", Path("/proc/self/net/dev").read_text)
    with pytest.raises(NotFound, match="missing in sandbox"):
        links.sandbox_setup(a.path, links.SandboxConfig("nope0", (), ()))
    assert "lo" in links.sandbox_links(a.path)  # still serving after errors


def test_helper_restarts_after_it_died(netns, helper):
    a = netns("a")
    assert "lo" in links.sandbox_links(a.path)
    nsexec._helper[0].kill()  # type: ignore[index]
    nsexec._helper[0].wait()  # type: ignore[index]
    assert "lo" in links.sandbox_links(a.path)


@pytest.mark.parametrize("via_helper", [True, False])
def test_a_netlink_socket_in_a_sandbox_sees_that_namespace(netns, via_helper):
    """muslind gets it from the helper (fd passing); a short-lived process switches its one
    thread there and back. Either way the caller ends in its own namespace."""
    a = netns("a")
    a.run("ip", "link", "add", "mty0", "type", "veth", "peer", "name", "mty1")
    home = Path("/proc/self/ns/net").resolve()
    nsexec.use_helper(via_helper)
    try:
        for _ in range(3):
            assert {"mty0", "mty1", "lo"} <= set(links.sandbox_links(a.path))
            assert Path("/proc/self/ns/net").resolve() == home
        with pytest.raises(NotFound, match="does not exist"):
            links.sandbox_links("/run/netns/mt-none-000000")
    finally:
        nsexec.use_helper(False)

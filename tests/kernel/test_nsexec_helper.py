"""The persistent netns helper muslind uses (nsexec.use_helper): same results and errors
as the fork-per-call path, and it always goes back to its own namespace."""

from __future__ import annotations

import ipaddress

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
    home = nsexec.run_in_netns("/proc/self/ns/net", links._all_addresses)  # the helper's own namespace
    assert not {"10.201.1.1/24", "10.201.2.1/24"} & set(home)


def test_helper_errors_are_the_same(netns, helper):
    a = netns("a")
    with pytest.raises(NotFound, match="does not exist"):
        nsexec.run_in_netns("/run/netns/mt-none-000000", links._all_addresses)
    with pytest.raises(NotFound, match="missing in sandbox"):
        links.sandbox_setup(a.path, links.SandboxConfig("nope0", (), ()))
    assert "lo" in links.sandbox_links(a.path)  # still serving after errors


def test_helper_restarts_after_it_died(netns, helper):
    a = netns("a")
    assert "lo" in links.sandbox_links(a.path)
    nsexec._helper.kill()  # type: ignore[union-attr]
    nsexec._helper.wait()  # type: ignore[union-attr]
    assert "lo" in links.sandbox_links(a.path)

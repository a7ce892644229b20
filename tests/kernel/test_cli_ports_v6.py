"""Dual stack and published ports through the `muslin` CLI, proven with packets."""

from __future__ import annotations

import random

import pytest
from nsutil import EchoServer, random_subnet24, sh, tcp_echo
from test_cli_bridge import _ns, host_links, ip_of, world  # noqa: F401 - fixture

pytestmark = pytest.mark.kernel


def test_dual_stack_ping_and_tcp_over_ipv6(world):
    w = world
    v6 = f"fd00:{random.randint(1, 0xfff):x}:{random.randint(1, 0xfff):x}::/64"
    w.muslin("network", "create", "ds", "--subnet", random_subnet24(), "--subnet", v6)
    a, b = w.sandbox("a"), w.sandbox("b")
    ea, eb = w.connect("ds", a), w.connect("ds", b)
    assert len(ea["addresses"]) == 2
    a6 = [x.split("/")[0] for x in ea["addresses"] if ":" in x][0]
    b6 = [x.split("/")[0] for x in eb["addresses"] if ":" in x][0]
    assert w.ping(a, ip_of(eb))
    assert w.in_sb(a, "ping", "-6", "-c", "1", "-W", "2", b6).returncode == 0
    with EchoServer(_ns(b), "::", 7011):
        assert tcp_echo(_ns(a), b6, 7011, "six") == f"{a6} six"
    assert "default" in w.in_sb(a, "ip", "-6", "route", check=True).stdout


def test_published_port_from_outside_host_loopback_and_hairpin(world):
    w = world
    w.muslin("network", "create", "pub", "--subnet", random_subnet24())
    a, b = w.sandbox("a"), w.sandbox("b")
    ea = w.connect("pub", a, "-p", "8080:7012")
    eb = w.connect("pub", b)
    with EchoServer(_ns(a), "0.0.0.0", 7012):
        # From another host (the outside namespace), through the host's uplink address.
        seen = tcp_echo(w.out, "172.31.254.1", 8080, "outside")
        assert seen and seen.endswith("outside")
        # From the host itself, on 127.0.0.1 and on its own address.
        assert (tcp_echo(w.host, "127.0.0.1", 8080, "lo") or "").endswith("lo")
        assert (tcp_echo(w.host, "172.31.254.1", 8080, "self") or "").endswith("self")
        # From a neighbour on the same network and by hairpin from the container itself.
        assert (tcp_echo(_ns(b), "172.31.254.1", 8080, "nb") or "").endswith("nb")
        assert (tcp_echo(_ns(a), "172.31.254.1", 8080, "hairpin") or "").endswith("hairpin")
    # Disconnecting removes exactly this mapping.
    w.muslin("disconnect", "pub", a)
    assert "8080" not in sh("ip", "netns", "exec", w.host.name, "nft", "list", "table", "inet", "muslin").stdout
    assert eb["addresses"]

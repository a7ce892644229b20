"""Firewall compilation (pure): golden files, deltas, validation. No root needed.

Regenerate the golden files with UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from muslin.firewall import (FirewallState, NetRule, PortRule, Ruleset, compile, render_delete,
                             render_delta, render_full, sysctls_for)
from muslin.model.errors import Conflict, Invalid

GOLDEN = Path(__file__).parent / "golden" / "firewall"
N = ipaddress.ip_network
A = ipaddress.ip_address


def port(ep: str, hp: int, cip: str, cp: int, proto: str = "tcp", hip: str = "", br: str = "mbr0") -> PortRule:
    return PortRule(ep, proto, hip, hp, cip, cp, br)  # type: ignore[arg-type]  # str accepted


NET0 = NetRule("mbr0", (N("10.88.0.0/24"), N("fd88::/64")))
NET1 = NetRule("mbr1", (N("10.89.0.0/24"),), masquerade=False, isolate=False)
INTERNAL = NetRule("mbr2", (N("10.90.0.0/24"),), internal=True)
PORTS = (
    port("ep-a", 8080, "10.88.0.2", 80),
    port("ep-a", 8080, "fd88::2", 80),
    port("ep-a", 5353, "10.88.0.2", 53, proto="udp"),
    port("ep-b", 9000, "10.88.0.3", 9000, hip="127.0.0.1"),
    port("ep-b", 9443, "fd88::3", 443, hip="fd00::1", proto="sctp"),
)

STATES = {
    "empty": FirewallState(),
    "one_network": FirewallState(networks=(NET0,)),
    "three_networks": FirewallState(networks=(NET0, NET1, INTERNAL)),
    "ports": FirewallState(networks=(NET0, NET1, INTERNAL), ports=PORTS),
}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"golden file {path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1 regenerates)"


@pytest.mark.parametrize("name", sorted(STATES))
def test_golden_full(name):
    check_golden(f"{name}.nft", render_full(compile(STATES[name])))


def test_golden_delete():
    check_golden("delete.nft", render_delete())


def test_golden_delta_add_endpoint():
    old = compile(FirewallState(networks=(NET0, NET1, INTERNAL), ports=PORTS[:3]))
    new = compile(STATES["ports"])
    text = render_delta(old, new)
    check_golden("delta_add_endpoint.nft", text)
    assert text and all(line.startswith("add element inet muslin ") for line in text.splitlines())


def test_delta_remove_endpoint_only_deletes_by_key():
    old = compile(STATES["ports"])
    new = compile(FirewallState(networks=(NET0, NET1, INTERNAL), ports=PORTS[:3]))
    text = render_delta(old, new)
    check_golden("delta_remove_endpoint.nft", text)
    lines = text.splitlines()
    assert lines and all(line.startswith("delete element inet muslin ") for line in lines)
    # map deletes name only the key
    assert "delete element inet muslin hostports4 { 127.0.0.1 . tcp . 9000 }" in lines
    assert "delete element inet muslin mapped4 { 10.88.0.3 }" in lines


def test_delta_equal_is_empty():
    assert render_delta(compile(STATES["ports"]), compile(STATES["ports"])) == ""


def test_delta_changed_mapping_deletes_then_adds():
    old = compile(FirewallState(networks=(NET0,), ports=(port("e", 80, "10.88.0.2", 80),)))
    new = compile(FirewallState(networks=(NET0,), ports=(port("e", 80, "10.88.0.7", 8080),)))
    lines = render_delta(old, new).splitlines()
    i_del = lines.index("delete element inet muslin ports4 { tcp . 80 }")
    i_add = lines.index("add element inet muslin ports4 { tcp . 80 : 10.88.0.7 . 8080 }")
    assert i_del < i_add


def test_mapped_ip_kept_while_another_port_uses_it():
    both = compile(FirewallState(networks=(NET0,), ports=PORTS[:3]))
    one = compile(FirewallState(networks=(NET0,), ports=(PORTS[0], PORTS[1])))
    text = render_delta(both, one)
    assert text == "delete element inet muslin ports4 { udp . 5353 }\n"


def test_elements_are_flat_at_scale():
    ports = tuple(port(f"ep{i}", 10000 + i, str(ipaddress.ip_address("10.88.0.10") + i), 80) for i in range(200))
    rs = compile(FirewallState(networks=(NET0,), ports=ports))
    assert rs.skeleton == compile(STATES["one_network"]).skeleton  # no per-endpoint rules
    assert len(rs.elements["ports4"]) == 200 and len(rs.elements["mapped4"]) == 200
    full = render_full(rs)
    assert full.count("add element inet muslin ports4") == 1


def test_rules_refer_only_to_sets():
    # No addresses, ports or interface names of any network/endpoint inside the skeleton.
    sk = compile(STATES["ports"]).skeleton
    for needle in ("mbr0", "10.88.", "fd88", "8080"):
        assert needle not in sk


def test_masquerade_and_internal_membership():
    rs = compile(STATES["three_networks"])
    assert rs.elements["masq4"] == {"10.88.0.0/24"}  # mbr1 does not masquerade, mbr2 is internal
    assert rs.elements["masq6"] == {"fd88::/64"}
    assert rs.elements["internal"] == {'"mbr2"'}
    assert rs.elements["isolated"] == {'"mbr0"', '"mbr2"'}
    assert rs.elements["own4"] == {'10.88.0.0/24 . "mbr0"', '10.89.0.0/24 . "mbr1"', '10.90.0.0/24 . "mbr2"'}
    assert rs.elements["pairs"] == {'"mbr0" . "mbr0"', '"mbr1" . "mbr1"', '"mbr2" . "mbr2"'}


def test_host_prefix_rendered_as_address():
    rs = compile(FirewallState(networks=(NetRule("b", (N("10.1.2.3/32"),)),)))
    assert rs.elements["nets4"] == {"10.1.2.3"}


def test_sysctls():
    assert sysctls_for(FirewallState()) == {}
    assert sysctls_for(FirewallState(networks=(INTERNAL,))) == {}
    s = sysctls_for(STATES["ports"])
    assert s == {
        "/proc/sys/net/ipv4/conf/mbr0/route_localnet": "1",
        "/proc/sys/net/ipv4/ip_forward": "1",
        "/proc/sys/net/ipv6/conf/all/forwarding": "1",
    }


def test_ruleset_equality_and_unknown_set():
    assert compile(STATES["ports"]) == compile(FirewallState(STATES["ports"].networks, tuple(reversed(PORTS))))
    with pytest.raises(ValueError):
        Ruleset(elements={"nope": frozenset()})


@pytest.mark.parametrize("make, msg", [
    (lambda: port("e", 0, "10.0.0.2", 80), "host_port"),
    (lambda: port("e", 80, "10.0.0.2", 70000), "container_port"),
    (lambda: port("e", 80, "10.0.0.2", 80, proto="icmp"), "protocol"),
    (lambda: port("e", 80, "nonsense", 80), "container_ip"),
    (lambda: port("e", 80, "10.0.0.2", 80, hip="fd00::1"), "different IP families"),
    (lambda: port("e", 80, "10.0.0.2", 80, hip="x"), "host_ip"),
    (lambda: port("", 80, "10.0.0.2", 80), "endpoint id"),
    (lambda: port("e", 80, "10.0.0.2", 80, br='br"0'), "interface name"),
    (lambda: NetRule("a-very-long-bridge-name"), "interface name"),
    (lambda: NetRule("br*"), "interface name"),
    (lambda: NetRule("br0", ("10.0.0.1/24",)), "bad subnet"),
])
def test_invalid_input(make, msg):
    with pytest.raises(Invalid) as ei:
        make()
    assert msg in str(ei.value) and "\n" not in str(ei.value)


def test_unspecified_host_ip_means_any():
    assert port("e", 80, "10.0.0.2", 80, hip="0.0.0.0").host_ip == ""
    assert port("e", 80, "fd00::2", 80, hip="::").host_ip == ""


def test_conflicts():
    with pytest.raises(Conflict, match="mapped twice"):
        compile(FirewallState(networks=(NET0,), ports=(port("a", 80, "10.88.0.2", 80), port("b", 80, "10.88.0.3", 80))))
    # the same mapping twice is not a conflict
    compile(FirewallState(networks=(NET0,), ports=(port("a", 80, "10.88.0.2", 80),) * 2))
    # tcp and udp on the same port are different mappings
    compile(FirewallState(networks=(NET0,), ports=(port("a", 80, "10.88.0.2", 80), port("a", 80, "10.88.0.2", 80, "udp"))))
    with pytest.raises(Conflict, match="overlaps"):
        compile(FirewallState(networks=(NET0, NetRule("x", (N("10.88.0.0/16"),)))))
    with pytest.raises(Conflict, match="listed twice"):
        compile(FirewallState(networks=(NET0, NetRule("mbr0", (), internal=True))))

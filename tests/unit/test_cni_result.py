"""CNI results in every version, and prevResult conversion (pure, no root)."""

from __future__ import annotations

import ipaddress

import pytest

from muslin.cni import result as R
from muslin.cni.types import SUPPORTED_VERSIONS, CniError
from muslin.model.types import Route


def canonical() -> dict:
    ifaces = [R.interface("mus-n", "0a:00:00:00:00:01"),
              R.interface("mv123", "0a:00:00:00:00:02", 1500),
              R.interface("eth0", "0a:00:00:00:00:03", 1500, "/run/netns/c")]
    ips = [R.ip_entry(ipaddress.ip_interface("10.1.0.5/24"), ipaddress.ip_address("10.1.0.1"), 2),
           R.ip_entry(ipaddress.ip_interface("fd00::5/64"), ipaddress.ip_address("fd00::1"), 2)]
    routes = [Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.1.0.1")).to_dict(),
              {"dst": "::/0", "gw": "fd00::1", "priority": 5}]
    return R.build(ifaces, ips, routes, {"nameservers": ["10.1.0.1"], "search": [], "domain": "x"})


def test_1_1_keeps_everything():
    out = R.to_version(canonical(), "1.1.0")
    assert out["cniVersion"] == "1.1.0"
    assert out["interfaces"][2] == {"name": "eth0", "mac": "0a:00:00:00:00:03", "mtu": 1500,
                                    "sandbox": "/run/netns/c"}
    assert out["routes"][1]["priority"] == 5
    assert all("version" not in ip for ip in out["ips"]) and out["ips"][0]["interface"] == 2
    assert out["dns"] == {"nameservers": ["10.1.0.1"], "domain": "x"}


def test_1_0_drops_1_1_fields():
    out = R.to_version(canonical(), "1.0.0")
    assert "mtu" not in out["interfaces"][1] and "mtu" not in out["interfaces"][2]
    assert out["interfaces"][2]["mac"] and out["interfaces"][2]["sandbox"] == "/run/netns/c"
    assert "priority" not in out["routes"][1]
    assert all("version" not in ip for ip in out["ips"])


@pytest.mark.parametrize("v", ["0.3.0", "0.3.1", "0.4.0"])
def test_0_3_and_0_4_carry_ip_version(v):
    out = R.to_version(canonical(), v)
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert out["ips"][0]["interface"] == 2 and out["cniVersion"] == v
    assert "mtu" not in out["interfaces"][2]


@pytest.mark.parametrize("v", ["0.1.0", "0.2.0"])
def test_legacy_ip4_ip6(v):
    out = R.to_version(canonical(), v)
    assert set(out) == {"cniVersion", "ip4", "ip6", "dns"}
    assert out["ip4"] == {"ip": "10.1.0.5/24", "gateway": "10.1.0.1",
                          "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]}
    assert out["ip6"] == {"ip": "fd00::5/64", "gateway": "fd00::1", "routes": [{"dst": "::/0", "gw": "fd00::1"}]}


def test_unknown_version_is_code_1():
    with pytest.raises(CniError) as ei:
        R.to_version(canonical(), "0.5.0")
    assert ei.value.cni_code == 1


@pytest.mark.parametrize("src", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("dst", SUPPORTED_VERSIONS)
def test_round_trip_every_pair(src, dst):
    """Render in src, read back as a prevResult, render in dst: addresses survive."""
    back = R.parse_result(R.to_version(canonical(), src))
    out = R.to_version(back, dst)
    again = R.parse_result(out)
    addrs = [ip["address"] for ip in again["ips"]]
    assert addrs == ["10.1.0.5/24", "fd00::5/64"]
    if src >= "0.3.0" and dst >= "0.3.0":
        assert [i["name"] for i in out["interfaces"]] == ["mus-n", "mv123", "eth0"]
        assert R.container_addresses(again, "eth0") == [ipaddress.ip_interface("10.1.0.5/24"),
                                                        ipaddress.ip_interface("fd00::5/64")]


def test_ipam_result_has_no_interfaces():
    res = R.build([], [R.ip_entry(ipaddress.ip_interface("10.2.0.2/24"), "10.2.0.1")], [{"dst": "0.0.0.0/0"}])
    for v in ("0.3.1", "0.4.0", "1.0.0", "1.1.0"):
        out = R.to_version(res, v)
        assert "interfaces" not in out and "interface" not in out["ips"][0]
        assert out["ips"][0]["gateway"] == "10.2.0.1" and out["routes"] == [{"dst": "0.0.0.0/0"}]
    assert R.container_addresses(res, "eth0") == [ipaddress.ip_interface("10.2.0.2/24")]


@pytest.mark.parametrize("bad,code", [
    ("x", 2), ({"cniVersion": "9.9.9"}, 1), ({"cniVersion": "1.0.0", "ips": "x"}, 2),
    ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]}, 7),
    ({"cniVersion": "1.0.0", "ips": [{"address": "nope/24"}]}, 7),
    ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": 3}]}, 7),
    ({"cniVersion": "1.0.0", "routes": [{"dst": "x"}]}, 7),
    ({"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]}, 2),
    ({"cniVersion": "0.2.0", "ip4": {"ip": 5}}, 2),
])
def test_bad_prev_result(bad, code):
    with pytest.raises(CniError) as ei:
        R.parse_result(bad)
    assert ei.value.cni_code == code


def test_merge_appends_and_shifts_indices():
    prev = R.parse_result({"cniVersion": "1.0.0", "interfaces": [{"name": "tap0"}],
                           "ips": [{"address": "10.9.0.2/24", "interface": 0}], "dns": {"nameservers": ["1.2.3.4"]}})
    out = R.merge(prev, canonical())
    assert [i["name"] for i in out["interfaces"]] == ["tap0", "mus-n", "mv123", "eth0"]
    assert [ip.get("interface") for ip in out["ips"]] == [0, 3, 3]
    assert out["dns"] == {"nameservers": ["1.2.3.4"]}
    assert R.merge(None, canonical()) == canonical()


def test_error_shape():
    assert R.error(7, "bad", "more", "0.4.0") == {"cniVersion": "0.4.0", "code": 7, "msg": "bad", "details": "more"}
    assert R.error(1, "v", version="x") == {"cniVersion": "1.1.0", "code": 1, "msg": "v"}

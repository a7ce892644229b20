"""Name, id and MAC validators: whole-string matches (issue 8, bug 7). Pure, no root."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from muslin.backends import model as backends_model
from muslin.docker.options import parse_options
from muslin.lab import core as lab
from muslin.model import names
from muslin.model.errors import Invalid

NEWLINE = ["abc\n", "abc\r\n", "\nabc", "ab\nc"]


@pytest.mark.parametrize("bad", NEWLINE)
def test_names_with_a_newline_are_invalid_everywhere(bad):
    with pytest.raises(Invalid):
        names.check_name(bad)
    assert not names.valid_name(bad)
    with pytest.raises(Invalid):
        backends_model.ClusterConfig(bad).validate()
    with pytest.raises(Invalid):
        lab.check_lab_name(bad)
    for key in ("muslin.network", "muslin.bridge"):
        with pytest.raises(Invalid, match=key):
            parse_options({key: bad})
    with pytest.raises(Invalid, match="muslin.parent"):
        parse_options({"muslin.mode": "macvlan", "muslin.parent": bad})
    with pytest.raises(Invalid):
        names.check_ifname(bad)


def test_good_names_still_pass():
    names.check_name("web-1.a_b")
    assert names.valid_name("c1")
    assert backends_model.ClusterConfig("net0").validate().network == "net0"
    assert lab.check_lab_name("lab1") == "lab1"
    assert parse_options({"muslin.network": "web", "muslin.bridge": "br-web"}).bridge == "br-web"


def test_lab_sandbox_name_with_a_newline_is_refused_before_any_command(monkeypatch):
    monkeypatch.setattr(lab.LabState, "load", classmethod(lambda cls, name: SimpleNamespace(
        hosts=["h1"], sandboxes={})))

    def no_commands(*cmd, **kw):
        raise AssertionError(f"ran {cmd}")

    monkeypatch.setattr(lab, "_run", no_commands)
    with pytest.raises(Invalid, match="sandbox name"):
        lab.sandbox("lab1", "h1", "sb1\n")


@pytest.mark.parametrize("mac,needle", [
    ("zz", "is not a MAC address"), ("02:00:00:00:00:01\n", "is not a MAC address"),
    ("02-00-00-00-00-01", "is not a MAC address"), ("02:00:00:00:00", "is not a MAC address"),
    ("01:00:5e:00:00:01", "multicast"), ("ff:ff:ff:ff:ff:ff", "multicast"), ("03:00:00:00:00:01", "multicast"),
    ("00:00:00:00:00:00", "all-zero"), (None, "is not a MAC address"), (5, "is not a MAC address"),
])
def test_check_mac_refuses_invalid_multicast_and_zero(mac, needle):
    with pytest.raises(Invalid, match=needle) as ei:
        names.check_mac(mac, "--mac")
    assert ei.value.message.startswith("--mac ") and "\n" not in ei.value.message


def test_check_mac_returns_lower_case():
    assert names.check_mac("02:AB:cd:00:00:01") == "02:ab:cd:00:00:01"


@pytest.mark.parametrize("name", ["Í", "br*", "a\n", ".", "..", "x" * 16, "", "a:b"])
def test_bridge_name_is_what_nft_sets_hold(name):
    with pytest.raises(Invalid, match="bridge name"):
        names.check_bridge_name(name)
    names.check_bridge_name("mus-web.1_x")

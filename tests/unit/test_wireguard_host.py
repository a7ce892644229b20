"""The pure parts of dataplane/wireguard.py (no root): what a host lacks, named; `wg show
dump` read without its private key; interface names."""

from __future__ import annotations

import pytest

from muslin.dataplane import wireguard as wg
from muslin.model.errors import Unsupported
from muslin.model.kernel import WgPeer


def test_kernel_module_first_then_wireguard_go_on_tun():
    assert wg.choose(wg.Support(True, False, "/usr/bin/wg", "")) == "kernel"
    assert wg.choose(wg.Support(False, True, "/usr/bin/wg", "/usr/bin/wireguard-go")) == "wireguard-go"


@pytest.mark.parametrize("support, missing", [
    (wg.Support(False, True, "", "/usr/bin/wireguard-go"), ["no wg binary (apt-get install wireguard-tools)"]),
    (wg.Support(False, False, "/usr/bin/wg", "/usr/bin/wireguard-go"), ["no TUN device (/dev/net/tun)"]),
    (wg.Support(False, True, "/usr/bin/wg", ""), ["no wireguard-go binary (apt-get install wireguard-go)"]),
    (wg.Support(False, False, "", ""), ["no wg binary", "no TUN device", "no wireguard-go binary"]),
    (wg.Support(True, True, "", "/usr/bin/wireguard-go"), ["no wg binary"]),
])
def test_what_is_missing_is_named(support, missing):
    with pytest.raises(Unsupported) as e:
        wg.choose(support)
    msg = str(e.value)
    assert msg.startswith("wireguard backend: this host cannot run WireGuard: ") and "\n" not in msg
    for m in missing:
        assert m in msg
    if not support.kernel_module and (not support.tun or not support.wireguard_go):
        assert "no wireguard kernel module" in msg


DUMP = ("cHJpdmF0ZS1rZXktbmV2ZXItc2hvd24tYW55d2hlcmU=\tUFVCMA==\t51820\toff\n"
        "UFVCMQ==\t(none)\t10.250.0.2:51820\t10.244.1.0/24\t1700000000\t1234\t5678\t25\n"
        "UFVCMg==\t(none)\t(none)\t10.244.2.0/24,10.9.0.0/16\t0\t0\t0\toff\n")


def test_dump_is_read_without_the_private_key():
    s = wg.parse_dump("mw-x", DUMP)
    assert s.public_key == "UFVCMA==" and s.port == 51820
    assert s.peers == (WgPeer("mw-x", "UFVCMQ==", "10.250.0.2:51820", ("10.244.1.0/24",), 25),
                       WgPeer("mw-x", "UFVCMg==", "", ("10.244.2.0/24", "10.9.0.0/16"), 0))
    assert s.handshakes[0] == ("UFVCMQ==", 1700000000, 1234, 5678)
    assert "cHJpdmF0ZS1rZXk" not in repr(s)


def test_interface_names_fit_the_kernel_and_differ_per_network():
    for net in ("n", "net0", "a-very-long-cluster-network-name"):
        name = wg.ifname(net)
        assert len(name) <= 15 and name.startswith("mw-")
    assert wg.ifname("net0") == wg.ifname("net0") != wg.ifname("net1")


needs_wg = pytest.mark.skipif(not wg.support().wg, reason="no wg binary (wireguard-tools)")


@needs_wg
def test_the_key_pair_is_made_once_mode_0600_and_a_rotation_is_seen_by_the_next_tick(tmp_path):
    host = wg.WireGuardHost(tmp_path, "n", lambda m: None)
    host.impl = "wireguard-go"  # no probe: this test needs no TUN
    f = host.facts()
    key = tmp_path / "wireguard.key"
    assert key.stat().st_mode & 0o777 == 0o600 and f["key_file"] == str(key)
    assert f["public_key"] == wg.public_key(key) and len(f["public_key"]) == 44
    assert key.read_text().strip() not in repr(f)
    assert wg.WireGuardHost(tmp_path, "n", lambda m: None).facts(create=False) == {"ifname": wg.ifname("n")}
    assert host.facts() == f and not host.tick()  # kept across calls (and restarts)
    new = wg.rotate_key(tmp_path)
    assert new != f["public_key"] and host.tick() and host.facts()["public_key"] == new
    assert key.stat().st_mode & 0o777 == 0o600 and not (tmp_path / "wireguard.key.new").exists()


@needs_wg
def test_rotate_every_rotates_an_old_key_and_a_key_readable_by_others_is_refused(tmp_path):
    import os

    from muslin.model.errors import Invalid

    said = []
    host = wg.WireGuardHost(tmp_path, "n", said.append, {"rotate_every": 60})
    host.impl = "wireguard-go"
    first = host.facts()["public_key"]
    key = tmp_path / "wireguard.key"
    old = key.stat().st_mtime - 120
    os.utime(key, (old, old))
    assert host.tick() and host.facts()["public_key"] != first and "rotating" in said[0]
    key.chmod(0o644)
    other = wg.WireGuardHost(tmp_path, "n", lambda m: None)
    other.impl = "wireguard-go"
    with pytest.raises(Invalid, match="readable by others"):
        other.facts()


def test_the_strict_mode_table_is_one_atomic_batch_and_refuses_odd_names():
    from muslin.dataplane.overlay import guard_script
    from muslin.model.errors import Invalid
    from muslin.model.kernel import EgressGuard

    s = guard_script(EgressGuard("muslin-wg-n", "10.244.1.0/24", "10.244.0.0/16", "mw-n-1a2b"))
    assert s.startswith("table inet muslin-wg-n {}\ndelete table inet muslin-wg-n\ntable inet muslin-wg-n {")
    rule = ('ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 ip daddr != 10.244.1.0/24 oifname != "mw-n-1a2b" '
            'counter drop comment "muslin-guard 10.244.1.0/24 10.244.0.0/16 mw-n-1a2b"')
    assert s.count(rule) == 2 and "hook forward" in s and "hook output" in s
    for bad in (EgressGuard("t x", "10.0.0.0/24", "10.0.0.0/16", "wg0"),
                EgressGuard("t", "10.0.0.0/24", "10.0.0.0/16", 'wg"; flush ruleset')):
        with pytest.raises(Invalid):
            guard_script(bad)

"""The `muslin` command for scripts and people, on the real kernel (inside a namespace that
plays the host): --label and ls --filter, -q and --format, whole values when stdout is a
pipe (nothing cut at 80 columns), inspect's human view, network prune (only the CLI's
unused networks; asks first), and the same `error:` lines and exit statuses."""

from __future__ import annotations

import json
import subprocess

import pytest

from nsutil import random_subnet24, suffix, tool

pytestmark = pytest.mark.kernel


@pytest.fixture
def m(netns, tmp_path):
    host = netns("host")
    state = tmp_path / "state"

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([tool("muslin"), "--state-dir", str(state), "--host-netns", host.name, *args],
                              capture_output=True, text=True, timeout=120, input=input)

    yield run
    for s in run("sandbox", "ls", "-q").stdout.split():
        run("sandbox", "rm", s)
    for n in run("network", "ls", "-q").stdout.split():
        run("network", "rm", "-f", n)


def test_labels_filters_quiet_format_and_whole_values(m):
    long = "a-rather-long-network-name-" + suffix()
    web, db = random_subnet24(), random_subnet24()
    assert m("network", "create", long, "--subnet", web, "--label", "team=blue",
             "--label", "purpose=" + "x" * 120).returncode == 0
    db_name = "dbq-" + suffix()  # "q" and "-": never inside the other name's hex suffix
    assert m("network", "create", db_name, "--subnet", db, "--label", "team=red").returncode == 0
    r = m("network", "ls")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(long))
    assert web in line and "mus-" in line  # the whole row, not cut at the terminal's width
    assert m("network", "ls", "--filter", "label=team=blue", "-q").stdout == f"{long}\n"
    assert m("network", "ls", "--filter", "label=team", "--filter", "name=dbq-", "-q").stdout == f"{db_name}\n"
    assert m("network", "ls", "--filter", "driver=macvlan", "-q").stdout == ""
    items = json.loads(m("network", "ls", "--filter", "label=team=blue", "-o", "json").stdout)
    assert [(i["name"], i["labels"]["team"], i["subnets"], i["endpoints"]) for i in items] == [(long, "blue", [web], 0)]
    r = m("network", "ls", "--filter", "label=team=blue", "--format", "{name} {subnets[0]} {labels[purpose]}")
    assert r.stdout == f"{long} {web} {'x' * 120}\n"
    r = m("network", "ls", "--filter", "colour=blue")
    assert (r.returncode, r.stderr) == (2, "error: --filter 'colour=blue': use KEY=VALUE with KEY one of name, "
                                           "driver, label, origin\n")
    r = m("network", "ls", "--format", "{nope}")
    assert r.returncode == 2 and r.stderr.startswith("error: --format: no field 'nope' (fields: ")
    r = m("network", "create", "x" + suffix(), "--subnet", random_subnet24(), "--label", "muslin.cluster=x")
    assert (r.returncode, r.stderr.split(":")[0]) == (2, "error")

    sb = "s" + suffix()
    assert m("sandbox", "create", sb).returncode == 0
    r = m("connect", long, sb)
    assert r.returncode == 0, r.stderr
    addr = r.stdout.split()[1].split("/")[0]
    assert subprocess.run(["ip", "netns", "exec", sb, "ping", "-c", "1", "-W", "2", web.rsplit(".", 1)[0] + ".1"],
                          capture_output=True).returncode == 0
    r = m("network", "inspect", long)
    assert r.returncode == 0
    assert f"name:       {long}" in r.stdout and "labels:     purpose=" + "x" * 120 + ", team=blue" in r.stdout
    assert f"{sb}/eth0" in r.stdout and addr in r.stdout and f"/run/netns/{sb}" in r.stdout
    assert m("network", "inspect", long, "--format", "{driver} {endpoints[0][ifname]}").stdout == "bridge eth0\n"
    assert m("sandbox", "ls", "-q").stdout == f"{sb}\n"
    assert m("sandbox", "ls", "--format", "{name} {endpoints[0][addresses][0]}").stdout.startswith(f"{sb} {addr}/")


def test_prune_removes_only_the_clis_unused_networks_and_asks(m):
    used, idle = "u" + suffix(), "i" + suffix()
    for n in (used, idle):
        assert m("network", "create", n, "--subnet", random_subnet24()).returncode == 0
    sb = "s" + suffix()
    m("sandbox", "create", sb)
    assert m("connect", used, sb).returncode == 0
    r = m("network", "prune", input="n\n")
    assert r.returncode == 130 and f"Remove 1 unused network(s): {idle}?" in r.stderr
    assert sorted(m("network", "ls", "-q").stdout.split()) == sorted([used, idle])
    r = m("network", "prune", input="y\n")
    assert (r.returncode, r.stdout) == (0, f"{idle}\n"), r.stderr
    assert m("network", "ls", "-q").stdout == f"{used}\n"
    assert m("network", "prune", "-f").stdout == ""  # nothing unused: nothing asked, nothing done
    assert m("network", "ls", "-q").stdout == f"{used}\n"

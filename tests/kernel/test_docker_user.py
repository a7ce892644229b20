"""With Docker's DOCKER-USER chain present, Muslin keeps one accept pair per bridge there
and removes it with the network; without the chain it does nothing."""

from __future__ import annotations

import hashlib

import pytest
from nsutil import random_subnet24
from test_cli_bridge import world  # noqa: F401 - fixture

pytestmark = pytest.mark.kernel


def rules(w) -> list[str]:
    r = w.host.run("iptables", "-t", "filter", "-S", "DOCKER-USER", check=False)
    return [line for line in r.stdout.splitlines() if "muslin:" in line]


def test_docker_user_rules_follow_networks(world):
    w = world
    w.muslin("network", "create", "before", "--subnet", random_subnet24())
    assert w.host.run("iptables", "-t", "filter", "-S", "DOCKER-USER", check=False).returncode != 0
    w.host.run("iptables", "-t", "filter", "-N", "DOCKER-USER")
    w.host.run("iptables", "-t", "filter", "-A", "DOCKER-USER", "-j", "RETURN")
    w.muslin("network", "create", "web", "--subnet", random_subnet24())
    have = [line.replace('"', "") for line in rules(w)]
    tag = f"muslin:{hashlib.sha256(str(w.state).encode()).hexdigest()[:12]}:mus-web"  # the state dir's own
    assert sorted(have) == sorted([
        f"-A DOCKER-USER -i mus-web -m comment --comment {tag} -j ACCEPT",
        f"-A DOCKER-USER -o mus-web -m comment --comment {tag} -j ACCEPT"])
    # Docker's policy: drop forwarding. The sandboxes still reach each other and the outside.
    w.host.run("iptables", "-P", "FORWARD", "DROP")
    w.host.run("iptables", "-I", "FORWARD", "-j", "DOCKER-USER")
    w.host.run("iptables", "-A", "FORWARD", "-j", "DROP")
    a, b = w.sandbox("a"), w.sandbox("b")
    w.connect("web", a)
    eb = w.connect("web", b)
    assert w.ping(a, eb["addresses"][0].split("/")[0])
    assert w.ping(a, "172.31.254.2")
    w.muslin("network", "rm", "--force", "web")
    assert rules(w) == []
    assert "-A DOCKER-USER -j RETURN" in w.host.run("iptables", "-S", "DOCKER-USER").stdout

"""CLI sandboxes: named network namespaces under /run/netns, tracked in the store."""

from __future__ import annotations

import subprocess

from muslin.control.service import Muslin
from muslin.dataplane.links import sandbox_loopback_up
from muslin.dataplane.nsexec import netns_exists
from muslin.model import names
from muslin.model.errors import Conflict, NotFound, Unavailable
from muslin.model.types import AttachRequest, Endpoint, IPAddress, PortMapping

PREFIX = "sandboxes/"
OWNER_INDEX = "ipam-owner/"


def path_of(name: str) -> str:
    return f"/run/netns/{name}"


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise Unavailable(f"ip {' '.join(args)}: {r.stderr.strip()}")


def create(m: Muslin, name: str) -> None:
    names.check_name(name, "sandbox name")
    if netns_exists(path_of(name)):
        raise Conflict(f"sandbox {name!r} already exists")
    _ip("netns", "add", name)
    try:
        sandbox_loopback_up(path_of(name))
        m.store.put(PREFIX + name, {"name": name, "netns": path_of(name)})
    except BaseException:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        raise


def endpoints_of(m: Muslin, name: str) -> list[Endpoint]:
    return [e for e in m.endpoints() if e.netns == path_of(name)]


def list_all(m: Muslin) -> list[dict]:
    eps = m.endpoints()
    out = []
    for kv in m.store.list(PREFIX):
        name = kv.value["name"]
        mine = [e for e in eps if e.netns == path_of(name)]
        out.append({"name": name, "netns": path_of(name), "exists": netns_exists(path_of(name)),
                    "endpoints": [{"network": e.network, "ifname": e.ifname, "mac": e.mac,
                                   "addresses": [str(a) for a in e.addresses]} for e in mine]})
    return out


def remove(m: Muslin, name: str) -> None:
    """Disconnect and delete a sandbox. Also frees addresses a crashed `connect` held
    without a record (owner 'cli/<name>/...'); its links die with the namespace."""
    for ep in endpoints_of(m, name):
        m.detach(ep.network, ep.endpoint_id)
    if netns_exists(path_of(name)):
        _ip("netns", "del", name)
    for kv in m.store.list(f"{OWNER_INDEX}cli/{name}/"):
        m.ipam.release(kv.key[len(OWNER_INDEX):])
    m.store.delete(PREFIX + name)


def connect(m: Muslin, network: str, sandbox: str, ifname: str, ips: tuple[IPAddress, ...], mac: str,
            ports: tuple[PortMapping, ...]) -> Endpoint:
    if not netns_exists(path_of(sandbox)):
        raise NotFound(f"sandbox {sandbox!r} does not exist (muslin sandbox create {sandbox})")
    eid = f"{sandbox}/{ifname}"
    return m.attach(AttachRequest(network=network, endpoint_id=eid, container_id=sandbox, ifname=ifname,
                                  netns=path_of(sandbox), ips=ips, mac=mac, ports=ports, owner=f"cli/{eid}"))


def disconnect(m: Muslin, network: str, sandbox: str, ifname: str = "") -> None:
    for ep in endpoints_of(m, sandbox):
        if ep.network == network and (not ifname or ep.ifname == ifname):
            m.detach(network, ep.endpoint_id)

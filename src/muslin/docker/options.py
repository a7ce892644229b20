"""`docker network create -o KEY=VALUE` options and the Muslin Network they describe.

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from muslin.docker.types import CreateNetworkRequest, IPAMData
from muslin.model import names
from muslin.model.errors import Invalid
from muslin.model.types import IPRange, Network

MTU_KEYS = ("mtu", "com.docker.network.driver.mtu")
KNOWN = (*MTU_KEYS, "muslin.network", "muslin.mode", "muslin.parent", "muslin.isolate",
         "muslin.bridge", "muslin.reuse_bridge", "muslin.masquerade", "muslin.spoofcheck")
MODES = ("bridge", "macvlan")


@dataclass(frozen=True)
class NetworkOptions:
    network: str = ""  # join/create a Muslin network of this name
    mode: str = "bridge"
    parent: str = ""
    isolate: bool = True
    bridge: str = ""
    masquerade: bool = True
    reuse_bridge: bool = False  # use the existing bridge muslin.bridge names (never deleted)
    spoofcheck: bool = True  # each container sends only from its own MAC and addresses
    mtu: int = 0
    given: tuple[str, ...] = ()  # option keys the user set


def _bool(key: str, v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise Invalid(f"option {key}={v!r} is not a boolean (true/false)")


def parse_options(generic: dict[str, str]) -> NetworkOptions:
    """Validate the generic option map; unknown keys are Invalid and named."""
    unknown = sorted(k for k in generic if k not in KNOWN)
    if unknown:
        raise Invalid(f"unknown option {unknown[0]!r} for the muslin driver (known: {', '.join(KNOWN)})")
    kw: dict[str, object] = {"given": tuple(sorted(generic))}
    for key in MTU_KEYS:
        if key in generic:
            try:
                mtu = int(generic[key])
            except ValueError:
                raise Invalid(f"option {key}={generic[key]!r} is not a number") from None
            if not 68 <= mtu <= 65535:
                raise Invalid(f"option {key}={mtu} is out of range 68-65535")
            kw["mtu"] = mtu
    if "muslin.network" in generic:
        kw["network"] = names.check_name(generic["muslin.network"], "option muslin.network", 64)
    if "muslin.mode" in generic:
        mode = generic["muslin.mode"]
        if mode not in MODES:
            raise Invalid(f"option muslin.mode={mode!r} must be one of {', '.join(MODES)}")
        kw["mode"] = mode
    for key, check in (("muslin.parent", names.check_ifname), ("muslin.bridge", names.check_bridge_name)):
        if key in generic:
            kw[key.split(".")[1]] = check(generic[key], f"option {key}")
    for key in ("muslin.isolate", "muslin.masquerade", "muslin.reuse_bridge", "muslin.spoofcheck"):
        if key in generic:
            kw[key.split(".")[1]] = _bool(key, generic[key])
    opts = NetworkOptions(**kw)  # type: ignore[arg-type]
    if opts.mode == "macvlan" and not opts.parent:
        raise Invalid("option muslin.mode=macvlan needs muslin.parent=<host interface>")
    if opts.mode == "bridge" and opts.parent:
        raise Invalid("option muslin.parent is only for muslin.mode=macvlan")
    if opts.mode == "macvlan" and opts.bridge:
        raise Invalid("option muslin.bridge is only for muslin.mode=bridge")
    if opts.reuse_bridge and not opts.bridge:
        raise Invalid("option muslin.reuse_bridge=true needs muslin.bridge=<the existing bridge>")
    return opts


def _ranges(data: tuple[IPAMData, ...]) -> tuple[IPRange, ...]:
    out = []
    for d in data:
        net = d.network()
        gw = d.gateway_ip()
        if gw is not None and gw not in net:
            raise Invalid(f"gateway {gw} is outside pool {net}")
        out.append(IPRange(net, gateway=gw))
    return tuple(out)


def build_network(name: str, req: CreateNetworkRequest, opts: NetworkOptions) -> Network:
    """The Muslin network a CreateNetwork asks for (one range set per address family)."""
    v4 = _ranges(req.ipv4_data)
    v6 = _ranges(req.ipv6_data)
    for rs, fam in ((v4, 4), (v6, 6)):
        if any(r.subnet.version != fam for r in rs):
            raise Invalid(f"IPv{fam}Data holds a pool of the other address family")
    if not v4 and not v6:
        raise Invalid("the network has no IPv4 or IPv6 pool")
    labels = (("docker.network_id", req.network_id),)
    return Network(
        name=name, driver=opts.mode, bridge=opts.bridge,
        range_sets=tuple(rs for rs in (v4, v6) if rs),
        mtu=opts.mtu, masquerade=opts.masquerade, internal=req.internal, isolate=opts.isolate,
        hairpin=True,  # with br_netfilter, a DNATed hairpin connection is bridged back out its own port
        parent=opts.parent, origin="docker", reuse_bridge=opts.reuse_bridge, spoofcheck=opts.spoofcheck,
        options=tuple(sorted(req.generic.items())), labels=labels,
    )


def default_name(network_id: str) -> str:
    return f"docker-{network_id[:12]}"


def ip_in_pool(ip: str, pool: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(pool, strict=False)
    except ValueError:
        return False

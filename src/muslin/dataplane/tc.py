"""Traffic control of an endpoint's host side: the bandwidth limits.

As the reference CNI `bandwidth` plugin does it: a tbf as the root qdisc of the host veth
limits what goes into the sandbox (ingress); what comes out of it (egress) is redirected
from the veth's ingress qdisc (u32 match-all, mirred) to an ifb whose root tbf limits it.
The ifb is made over rtnetlink; qdiscs and filters with the `tc` binary (iproute2).
Everything here runs in the namespace the process runs in (the host).
"""

from __future__ import annotations

import errno
import json
import subprocess

from muslin.dataplane import rtnl
from muslin.dataplane.links import netlink_error
from muslin.model.errors import Invalid, NotFound, Unavailable, Unsupported

LATENCY = "25ms"  # the reference plugin's: a tbf's queue holds rate x 25 ms + burst
_GONE = ("Cannot find device", "No such device")
_NOTHING = ("Cannot delete qdisc with handle of zero", "Cannot find specified qdisc",
            "Invalid handle", "No such file or directory")


def create_ifb(nl: rtnl.Socket, name: str) -> None:
    """A new ifb, up (Conflict if a link of that name exists)."""
    body = rtnl.ifinfo(flags=rtnl.IFF_UP, change=rtnl.IFF_UP) + rtnl.string(rtnl.IFLA_IFNAME, name)
    body += rtnl.nested(rtnl.IFLA_LINKINFO, rtnl.string(rtnl.IFLA_INFO_KIND, "ifb"))
    try:
        nl.batch([rtnl.Request(rtnl.RTM_NEWLINK, rtnl.F_CREATE | rtnl.F_EXCL, body)])
    except rtnl.NetlinkError as e:
        if e.errno == errno.EOPNOTSUPP:
            raise Unsupported(f"ifb {name}: ifb devices (kernel module ifb) are not available in this kernel, "
                              "needed for an egress limit") from None
        raise netlink_error(e, f"ifb {name}") from None


def _tc(*lines: str, what: str) -> str:
    """Run tc commands as one batch; returns '' or the error text of the first that failed."""
    try:
        r = subprocess.run(["tc", "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"{what}: tc: {e}") from None
    if r.returncode == 0:
        return ""
    return " ".join((r.stderr or r.stdout).split()) or f"exit status {r.returncode}"


def _fail(what: str, err: str) -> Exception:
    if any(g in err for g in _GONE):
        return NotFound(f"{what}: no such device")
    if "Invalid" in err or "Illegal" in err:
        return Invalid(f"{what}: the kernel refused it: {err}")
    return Unavailable(f"{what}: {err}")


def set_tbf(name: str, rate: int, burst: int) -> None:
    """The root qdisc of `name`: a tbf at `rate` bit/s with a bucket of `burst` bits."""
    what = f"tbf on {name}"
    err = _tc(f"qdisc add dev {name} root tbf rate {rate}bit burst {max(burst // 8, 1)} latency {LATENCY}",
              what=what)
    if err:
        raise _fail(what, err)


def redirect_ingress(name: str, ifb: str) -> None:
    """Everything arriving on `name` goes out of `ifb` (an ingress qdisc and one filter)."""
    what = f"redirect of {name} to {ifb}"
    err = _tc(f"qdisc add dev {name} handle ffff: ingress",
              f"filter add dev {name} parent ffff: protocol all u32 match u32 0 0 "
              f"action mirred egress redirect dev {ifb}", what=what)
    if err:
        _tc(f"qdisc del dev {name} ingress", what=what)  # a half-made redirect goes
        raise _fail(what, err)


def clear(name: str) -> bool:
    """Remove the root and ingress qdiscs of `name` (back to the kernel's default); True if
    there was one. A missing link is fine."""
    what = f"qdiscs of {name}"
    removed = False
    for line in (f"qdisc del dev {name} root", f"qdisc del dev {name} ingress"):
        err = _tc(line, what=what)
        if not err:
            removed = True
        elif any(g in err for g in _GONE):
            return removed
        elif not any(n in err for n in _NOTHING):
            raise _fail(what, err)
    return removed


def limits(name: str) -> tuple[int, str]:
    """(rate in bit/s of the root tbf of `name` or 0, the ifb its ingress is redirected to
    or ''); (0, '') for a missing link."""
    rate, ifb = 0, ""
    for args in (("qdisc", "show", "dev", name), ("filter", "show", "dev", name, "ingress")):
        try:
            r = subprocess.run(["tc", "-j", *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable(f"tc {' '.join(args)}: {e}") from None
        if r.returncode != 0:
            err = " ".join(r.stderr.split())
            if any(g in err for g in _GONE):
                return 0, ""
            raise Unavailable(f"tc {' '.join(args)}: {err or r.returncode}")
        try:
            items = json.loads(r.stdout or "[]")
        except ValueError:
            raise Unavailable(f"tc {' '.join(args)}: unreadable JSON") from None
        for it in items:
            opts = it.get("options") or {}
            if args[0] == "qdisc" and it.get("kind") == "tbf" and it.get("root"):
                rate = int(opts.get("rate", 0)) * 8
            for act in opts.get("actions", ()) if args[0] == "filter" else ():
                if act.get("kind") == "mirred" and act.get("mirred_action") == "redirect":
                    ifb = act.get("to_dev", "")
    return rate, ifb

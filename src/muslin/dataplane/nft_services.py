"""Apply services to Muslin's nft table (the rules and text come from firewall/services.py).

Every call holds the host namespace's nft lock (as the base sync does) and first checks the
table's owner mark by listing only its `owner` chain: a sync for another state dir is
refused with Conflict before anything is written. A change is one batch; a full sync lists
only the service maps, sets and chain names (never the whole table, whose rules grow with
the services), then applies one batch.

Conntrack: the entries of connections DNATed from a VIP to a backend that leaves are
deleted over ctnetlink (pyroute2), so a UDP client's next datagram picks a live backend.
"""

from __future__ import annotations

import json
import socket
from typing import Iterable

from muslin.dataplane import nft
from muslin.dataplane.nslock import netns_lock
from muslin.firewall import services as S
from muslin.firewall.compiler import FAMILY, OWNER_CHAIN, TABLE, owner_path, same_owner
from muslin.model.errors import Conflict, NotFound, Unavailable
from muslin.model.types import IPAddress


def _list(commands: Iterable[str], doing: str) -> list[dict]:
    """Run list commands (one nft call each: nft 1.0.6 fails a second `list` of a named
    object in one call with ENOENT); their JSON documents, in order."""
    return [doc for c in commands for doc in _list_one(c, doing)]


def _list_one(command: str, doing: str) -> list[dict]:
    res = nft._run(["-j", *command.split(" ")], doing=doing)
    if res.returncode != 0:
        if "No such file or directory" in res.stderr:
            raise NotFound(f"nftables: {doing}: the table inet {TABLE} or a part of it is missing")
        raise nft._error(res.stderr, doing)
    docs, text, i = [], res.stdout, 0
    dec = json.JSONDecoder()
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        try:
            doc, i = dec.raw_decode(text, i)
        except ValueError as e:
            raise Unavailable(f"nftables: {doing}: cannot read nft's answer: {e}") from None
        docs.append(doc)
    return docs


def table_owner() -> str | None:
    """The table's owner mark, reading only its `owner` chain (None: no table)."""
    try:
        docs = _list([f"list chain {FAMILY} {TABLE} {OWNER_CHAIN}"], "read the owner mark")
    except NotFound:  # no table, or a table without a mark?
        for doc in _list(["list tables"], "list tables"):
            for item in doc.get("nftables", []):
                t = item.get("table")
                if t and t.get("family") == FAMILY and t.get("name") == TABLE:
                    return ""
        return None
    for doc in docs:
        for item in doc.get("nftables", []):
            rule = item.get("rule")
            if rule and rule.get("chain") == OWNER_CHAIN:
                return str(rule.get("comment", ""))
    return ""


def _check_owner(owner: str) -> None:
    have = table_owner()
    if have is None:
        raise NotFound(f"there is no nftables table inet {TABLE} here: services need a Muslin network in this host "
                       "namespace")
    if have and owner and not same_owner(have, owner):
        raise Conflict(f"this host namespace is managed by Muslin with state dir {owner_path(have)} (its nftables "
                       f"table inet {TABLE}); use that state dir: one state dir per host namespace")


def apply(changes: S.ServiceChanges, owner: str) -> None:
    text = S.render_changes(changes)
    if not text:
        return
    with netns_lock("nft"):
        _check_owner(owner)
        nft.apply(text, doing="update services")


def observe() -> S.ServiceObserved:
    return S.parse_observed(_list(S.OBSERVE_COMMANDS, "list services"))


def resync(ports: Iterable[S.SvcPort], vips: Iterable[IPAddress], local: Iterable[IPAddress], owner: str) -> None:
    with netns_lock("nft"):
        _check_owner(owner)
        text = S.render_resync(ports, vips, local, observe())
        nft.apply(text, doing="sync services")


def marked() -> bool:
    try:
        _list([f"list chain {FAMILY} {TABLE} {S.MARK}"], "look for the services' mark")
        return True
    except NotFound:
        return False


_PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}


def conntrack_flush(protocol: str, vip: IPAddress, port: int, backend: IPAddress) -> int:
    """Delete the conntrack entries of connections to vip:port that were DNATed to backend."""
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    family = socket.AF_INET if vip.version == 4 else socket.AF_INET6
    want = NFCTAttrTuple(family=family, daddr=str(vip), proto=_PROTO[protocol], dport=port)
    n = 0
    try:
        with Conntrack() as ct:
            for e in list(ct.dump_entries(tuple_orig=want)):
                if str(e.tuple_reply.saddr) != str(backend):
                    continue
                try:
                    ct.delete(e)
                    n += 1
                except OSError:  # gone meanwhile
                    pass
    except OSError as e:
        raise Unavailable(f"conntrack: cannot delete the entries to {vip}:{port}/{protocol} via {backend}: "
                          f"{e.strerror or e}") from None
    return n

"""One query in, the local answer out (pure): A/AAAA/PTR from the name table, or FORWARD.

Follows Docker's embedded resolver where it and aardvark-dns differ: A/AAAA/PTR are
answered from the table, MX of a known name is NOERROR with no records (RFC 5321's implicit
MX), everything else goes upstream; a network marked `internal` forwards nothing (SERVFAIL,
as Docker answers when no upstream is there).
"""

from __future__ import annotations

import random
from typing import Callable

from muslin.dns import wire
from muslin.dns.records import TTL, NameTable
from muslin.model.types import IPAddress

FORWARD = None  # answer() returns it for a query that goes upstream


def answer(table: NameTable, q: wire.Query, network: str, client: IPAddress, tcp: bool = False,
           shuffle: Callable[[list], None] = random.shuffle) -> bytes | None:
    """The answer bytes, or FORWARD (None) when the query goes to the upstream servers."""
    limit = wire.TCP_MAX if tcp else q.max_udp()
    if q.opcode != 0:
        return wire.reply(q, wire.NOTIMP, authoritative=False)
    if q.qclass == wire.IN:
        visible = table.visible(network, client)
        name = q.key
        if q.qtype in (wire.A, wire.AAAA):
            found = table.resolve(name, 4 if q.qtype == wire.A else 6, visible)
            if found.addresses:
                addrs = list(found.addresses)
                if len(addrs) > 1:
                    shuffle(addrs)
                return wire.reply(q, wire.NOERROR, [wire.address_rr(a, TTL) for a in addrs], limit)
            if found.exists:
                return wire.reply(q, wire.NOERROR, (), limit)
        elif q.qtype == wire.PTR:
            ip = wire.reverse_address(name)
            if ip is not None:
                targets = table.reverse(ip, visible)
                if targets:
                    return wire.reply(q, wire.NOERROR, [wire.ptr_rr(t, TTL) for t in targets], limit)
        elif q.qtype == wire.MX and table.knows(name, visible):
            return wire.reply(q, wire.NOERROR, (), limit)
    if table.internal(network):
        return wire.reply(q, wire.SERVFAIL, authoritative=False)
    return FORWARD

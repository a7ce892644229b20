"""DNS messages on the wire, as much as muslind's resolver needs (RFC 1035, 6891). Pure.

`parse_query(data)` reads a query (header, one question, an EDNS OPT record);
`reply(query, ...)` builds the answer to it: the question echoed as asked, A/AAAA/PTR
records whose owner name points at the question, an OPT record when the query had one,
and, over `max_size`, as many records as fit with the TC bit set.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from muslin.model.types import IPAddress

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 255
IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
UDP_MIN = 512  # without EDNS, a UDP answer fits in 512 bytes (else TC)
UDP_MAX = 4096  # the largest EDNS payload we honour
OUR_PAYLOAD = 1232  # the payload size we advertise (DNS flag day 2020)
TCP_MAX = 65535


class WireError(ValueError):
    """A message that cannot be read (answered FORMERR when its header can be)."""


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str  # as asked, dots between labels, no trailing dot ('' = the root)
    qtype: int
    qclass: int
    question: bytes  # the question section as received (echoed in the answer)
    edns: bool = False
    payload: int = UDP_MIN  # the requester's UDP payload size (EDNS), at least 512
    do: bool = False

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def key(self) -> str:
        """The name for lookups: lower case (DNS is case-insensitive)."""
        return self.name.lower()

    def max_udp(self) -> int:
        return max(UDP_MIN, min(self.payload, UDP_MAX)) if self.edns else UDP_MIN


def _read_name(data: bytes, off: int) -> tuple[str, int]:
    """A possibly compressed name at `off`; returns (name, offset after it)."""
    labels: list[str] = []
    end = -1
    hops = 0
    total = 0
    while True:
        if off >= len(data):
            raise WireError("name runs past the end of the message")
        n = data[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(data):
                raise WireError("truncated name pointer")
            if end < 0:
                end = off + 2
            off = ((n & 0x3F) << 8) | data[off + 1]
            hops += 1
            if hops > 64:
                raise WireError("name pointer loop")
            continue
        if n & 0xC0:
            raise WireError("unknown label type")
        off += 1
        if n == 0:
            break
        label = data[off:off + n]
        if len(label) != n:
            raise WireError("label runs past the end of the message")
        total += n + 1
        if total > 255:
            raise WireError("name longer than 255 bytes")
        labels.append(label.decode("latin-1").replace(".", "\\."))
        off += n
    return ".".join(labels), (end if end >= 0 else off)


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in (name.split(".") if name else []):
        b = label.encode("latin-1", "replace")
        if not 0 < len(b) < 64:
            raise WireError(f"label {label!r} is not 1-63 bytes")
        out += bytes([len(b)]) + b
    return bytes(out) + b"\0"


def header_id(data: bytes) -> int | None:
    return struct.unpack_from("!H", data)[0] if len(data) >= 2 else None


def parse_query(data: bytes) -> Query:
    if len(data) < 12:
        raise WireError("shorter than a DNS header")
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
    if flags & QR:
        raise WireError("a response, not a query")
    if qd != 1:
        raise WireError(f"{qd} questions (one is expected)")
    name, off = _read_name(data, 12)
    if off + 4 > len(data):
        raise WireError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", data, off)
    question = data[12:off + 4]
    off += 4
    edns, payload, do = False, UDP_MIN, False
    for i in range(an + ns + ar):
        _, off = _read_name(data, off)
        if off + 10 > len(data):
            raise WireError("truncated record")
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, off)
        off += 10 + rdlen
        if off > len(data):
            raise WireError("record data runs past the end of the message")
        if rtype == OPT and i >= an + ns:
            edns, payload, do = True, rclass, bool(ttl & 0x8000)
    return Query(qid, flags, name, qtype, qclass, question, edns, payload, do)


def _opt() -> bytes:
    return b"\0" + struct.pack("!HHIH", OPT, OUR_PAYLOAD, 0, 0)


def _rr(rtype: int, ttl: int, rdata: bytes) -> bytes:
    return b"\xc0\x0c" + struct.pack("!HHIH", rtype, IN, ttl, len(rdata)) + rdata


def address_rr(ip: IPAddress, ttl: int) -> bytes:
    return _rr(A if ip.version == 4 else AAAA, ttl, ip.packed)


def ptr_rr(target: str, ttl: int) -> bytes:
    return _rr(PTR, ttl, encode_name(target))


def reply(q: Query, rcode: int = NOERROR, answers: list[bytes] | tuple[bytes, ...] = (),
          max_size: int = TCP_MAX, authoritative: bool = True) -> bytes:
    """The answer to `q`: at most `max_size` bytes, with TC set when records were left out."""
    flags = QR | (q.flags & (0x7800 | RD)) | RA | (AA if authoritative else 0) | (rcode & 0xF)
    opt = _opt() if q.edns else b""
    room = max_size - 12 - len(q.question) - len(opt)
    kept: list[bytes] = []
    for rr in answers:
        if len(rr) > room:
            flags |= TC
            break
        kept.append(rr)
        room -= len(rr)
    head = struct.pack("!HHHHHH", q.id, flags, 1, len(kept), 0, 1 if opt else 0)
    return head + q.question + b"".join(kept) + opt


def error_reply(data: bytes, rcode: int) -> bytes | None:
    """FORMERR/NOTIMP/SERVFAIL for a message we could not (or will not) read: the header only
    (with its question when it can be read); None when not even the id can be read."""
    if len(data) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    if flags & QR:
        return None  # never answer a response
    try:
        q = parse_query(data)
    except WireError:
        return struct.pack("!HHHHHH", qid, QR | (flags & (0x7800 | RD)) | RA | (rcode & 0xF), 0, 0, 0, 0)
    return reply(q, rcode, authoritative=False)


def truncate(data: bytes, max_size: int) -> bytes:
    """An answer from elsewhere cut to its header and question with TC set, when it is
    longer than `max_size` (the client asks again over TCP)."""
    if len(data) <= max_size or len(data) < 12:
        return data
    qid, flags, qd = struct.unpack_from("!HHH", data)
    off = 12
    try:
        for _ in range(qd):
            _, off = _read_name(data, off)
            off += 4
    except WireError:
        off, qd = 12, 0
    return struct.pack("!HHHHHH", qid, flags | TC, qd, 0, 0, 0) + data[12:off]


def rcode_of(data: bytes) -> int:
    return struct.unpack_from("!H", data, 2)[0] & 0xF if len(data) >= 12 else SERVFAIL


def reverse_address(name: str) -> IPAddress | None:
    """The address a PTR name asks for (x.x.x.x.in-addr.arpa, 32 nibbles.ip6.arpa), else None."""
    n = name.lower().rstrip(".")
    try:
        if n.endswith(".in-addr.arpa"):
            parts = n[: -len(".in-addr.arpa")].split(".")
            if len(parts) == 4:
                return ipaddress.IPv4Address(".".join(reversed(parts)))
        elif n.endswith(".ip6.arpa"):
            nib = n[: -len(".ip6.arpa")].split(".")
            if len(nib) == 32 and all(len(x) == 1 for x in nib):
                return ipaddress.IPv6Address(int("".join(reversed(nib)), 16))
    except ValueError:
        return None
    return None


def reverse_name(ip: IPAddress) -> str:
    return ip.reverse_pointer

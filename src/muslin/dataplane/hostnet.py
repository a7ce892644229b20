"""Host facts read from /proc and the socket API: routes, links, free ports."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

from muslin.model.types import IPNetwork


def host_routes() -> list[IPNetwork]:
    """Non-default routes of the main table (IPv4 and IPv6), from /proc."""
    out: list[IPNetwork] = []
    try:
        with open("/proc/net/route") as f:
            next(f, None)
            for line in f:
                p = line.split()
                if len(p) < 8:
                    continue
                dst = int(p[1], 16).to_bytes(4, "little")
                mask = int(p[7], 16).to_bytes(4, "little")
                prefix = bin(int.from_bytes(mask, "big")).count("1")
                if prefix:
                    out.append(ipaddress.ip_network(f"{ipaddress.IPv4Address(dst)}/{prefix}", strict=False))
    except OSError:
        pass
    try:
        with open("/proc/net/ipv6_route") as f:
            for line in f:
                p = line.split()
                prefix = int(p[1], 16)
                if prefix and p[9] != "lo":
                    addr = ipaddress.IPv6Address(bytes.fromhex(p[0]))
                    net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
                    if not net.is_link_local and not net.is_multicast:
                        out.append(net)
    except OSError:
        pass
    return out


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def port_free(proto: str, host_ip: str, port: int) -> bool:
    """Nothing on the host is bound to host_ip:port (tcp/udp; sctp is assumed free)."""
    if proto not in ("tcp", "udp"):
        return True
    fam = socket.AF_INET6 if host_ip and ":" in host_ip else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, kind)
    try:
        s.bind((host_ip or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), port))
        return True
    except OSError as e:
        return e.errno not in (errno.EADDRINUSE, errno.EACCES)
    finally:
        s.close()


def protocol_supported(proto: str) -> bool:
    """Does this kernel have sockets of the protocol (tcp, udp, sctp)?"""
    number = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": getattr(socket, "IPPROTO_SCTP", 132)}
    if proto not in number:
        return False
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    try:
        socket.socket(socket.AF_INET, kind, number[proto]).close()
        return True
    except OSError:
        return False

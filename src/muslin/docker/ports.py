"""Docker port bindings -> Muslin PortMappings (pure: the host-port check is passed in)."""

from __future__ import annotations

from typing import Callable, Iterable

from muslin.docker.types import PortBinding
from muslin.model.errors import Conflict, Exhausted
from muslin.model.types import PortMapping

EPHEMERAL = (32768, 60999)


def _clash(a_ip: str, b_ip: str) -> bool:
    return not a_ip or not b_ip or a_ip == b_ip


def resolve(bindings: Iterable[PortBinding], taken: Iterable[PortMapping],
            is_free: Callable[[str, str, int], bool] = lambda proto, ip, port: True,
            ephemeral: tuple[int, int] = EPHEMERAL, start_hint: int = 0) -> tuple[PortMapping, ...]:
    """Host ports for each binding: a fixed HostPort must be free; HostPort 0 takes a free
    ephemeral port; HostPort..HostPortEnd takes the first free port of the range.
    `taken` are other endpoints' mappings; `is_free(proto, host_ip, port)` asks the host.
    Raises Conflict (fixed port in use) or Exhausted (no port left in the range)."""
    used = list(taken)
    out: list[PortMapping] = []

    def busy(proto: str, ip: str, port: int) -> bool:
        return any(m.protocol == proto and m.host_port == port and _clash(m.host_ip, ip) for m in used + out)

    for b in bindings:
        if b.host_port and not b.host_port_end:
            if busy(b.proto, b.host_ip, b.host_port):
                raise Conflict(f"host port {b.host_port}/{b.proto} is already published by another container")
            if not is_free(b.proto, b.host_ip, b.host_port):
                raise Conflict(f"host port {b.host_ip or '*'}:{b.host_port}/{b.proto} is already in use on the host")
            port = b.host_port
        else:
            lo, hi = (b.host_port, b.host_port_end) if b.host_port else ephemeral
            span = hi - lo + 1
            first = (start_hint % span) if not b.host_port else 0
            port = 0
            for i in range(span):
                p = lo + (first + i) % span
                if not busy(b.proto, b.host_ip, p) and is_free(b.proto, b.host_ip, p):
                    port = p
                    break
            if not port:
                raise Exhausted(f"no free host port in {lo}-{hi}/{b.proto}")
        out.append(PortMapping(port, b.port, b.proto, b.host_ip))
    return tuple(out)

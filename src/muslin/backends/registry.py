"""Backends by name. Adding one: its own module under backends/, and one entry here."""

from __future__ import annotations

from muslin.backends import bgp, hostgw, vxlan, wireguard
from muslin.backends.base import Backend
from muslin.model.errors import Invalid

BACKENDS: dict[str, Backend] = {b.name: b for b in (vxlan.BACKEND, hostgw.BACKEND, bgp.BACKEND, wireguard.BACKEND)}


def names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise Invalid(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}") from None

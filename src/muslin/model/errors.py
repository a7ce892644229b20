"""The one error taxonomy. Front-ends map these to CNI codes, Docker `Err`, exit status.

Every message is one line that says what and why; no traceback reaches a user.
"""

from __future__ import annotations


class MuslinError(Exception):
    """Base of every error a user may see."""

    kind = "error"
    cni_code = 999
    exit_status = 1

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class Invalid(MuslinError):
    """The request or configuration is wrong (bad value, unknown key, bad JSON)."""

    kind = "invalid"
    cni_code = 7
    exit_status = 2


class NotFound(MuslinError):
    """A named object (network, sandbox, endpoint, netns) does not exist."""

    kind = "not-found"
    cni_code = 3
    exit_status = 3


class Conflict(MuslinError):
    """The request collides with existing state (overlap, name taken, CAS lost)."""

    kind = "conflict"
    cni_code = 7
    exit_status = 4


class Exhausted(MuslinError):
    """A pool (addresses, subnets, ports) has nothing left."""

    kind = "exhausted"
    cni_code = 7
    exit_status = 5


class Unsupported(MuslinError):
    """The kernel or platform lacks a feature; the message names it."""

    kind = "unsupported"
    cni_code = 7
    exit_status = 6


class Unavailable(MuslinError):
    """A dependency (store, agent, etcd) cannot be reached right now; retry later."""

    kind = "unavailable"
    cni_code = 11
    exit_status = 7

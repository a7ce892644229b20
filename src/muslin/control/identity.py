"""Use-cases on who an endpoint is: its name, aliases, labels and namespace.

DNS (muslind's name table), services and policy read these fields of the endpoint record;
they change nothing in the kernel, so a change is one compare-and-swap of the records
(a detach that races with it wins: a deleted record is never written again).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Iterable

from muslin.model import keys, names
from muslin.model.errors import Conflict, NotFound
from muslin.model.types import Endpoint
from muslin.store.base import Compare, Put

if TYPE_CHECKING:
    from muslin.control.service import Muslin

RETRIES = 20


def merged_labels(old: Iterable[tuple[str, str]], sets: dict[str, str] | None = None,
                  drops: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    out = dict(old)
    out.update(sets or {})
    for k in drops:
        out.pop(k, None)
    return tuple(sorted(out.items()))


def update(m: Muslin, network: str, endpoint_id: str, *, name: str | None = None,
           aliases: tuple[str, ...] | None = None, set_labels: dict[str, str] | None = None,
           drop_labels: Iterable[str] = (), namespace: str | None = None) -> Endpoint:
    """Change one endpoint's identity (None = keep); NotFound when it is not attached."""
    key = keys.endpoint(network, endpoint_id)
    drops = tuple(drop_labels)
    for _ in range(RETRIES):
        kv = m.store.get(key)
        if kv is None:
            raise NotFound(f"endpoint {endpoint_id} is not attached to network {network!r}")
        old = Endpoint.from_dict(kv.value)
        ep = replace(old, name=old.name if name is None else name,
                     aliases=old.aliases if aliases is None else tuple(aliases),
                     labels=merged_labels(old.labels, set_labels, drops),
                     namespace=old.namespace if namespace is None else names.check_namespace(namespace))
        if ep == old:
            return old
        try:
            m.store.put(key, ep.to_dict(), expect=kv.mod_revision)
        except Conflict:
            continue
        _services_follow(m, [(old, ep)], [Put(key, kv.value)])
        return ep
    raise Conflict(f"endpoint {endpoint_id} on network {network!r} kept changing; try again")


def relabel(m: Muslin, records: list[tuple[str, dict]], endpoint_ids: list[tuple[str, str]],
            sets: dict[str, str], drops: list[str]) -> list[Endpoint]:
    """Set/remove labels on some plain records (`(key, value with a 'labels' dict)`, e.g. a CLI
    sandbox's) and on endpoints, all in one transaction: every copy changes, or none."""
    for _ in range(RETRIES):
        compares: list[Compare] = []
        ops: list[Put] = []
        undo: list[Put] = []
        out: list[Endpoint] = []
        for key, _value in records:
            kv = m.store.get(key)
            if kv is None:
                raise NotFound(f"{key} is gone")
            value = dict(kv.value)
            value["labels"] = dict(merged_labels(dict(value.get("labels") or {}).items(), sets, drops))
            compares.append(Compare(key, kv.mod_revision))
            ops.append(Put(key, value))
            undo.append(Put(key, kv.value))
        olds: list[Endpoint] = []
        for network, eid in endpoint_ids:
            key = keys.endpoint(network, eid)
            kv = m.store.get(key)
            if kv is None:
                continue  # detached meanwhile: nothing to label
            olds.append(Endpoint.from_dict(kv.value))
            ep = replace(olds[-1], labels=merged_labels(olds[-1].labels, sets, drops))
            compares.append(Compare(key, kv.mod_revision))
            ops.append(Put(key, ep.to_dict()))
            undo.append(Put(key, kv.value))
            out.append(ep)
        try:
            m.store.txn(compares, ops)
        except Conflict:
            continue
        _services_follow(m, list(zip(olds, out)), undo)
        return out
    raise Conflict("the records kept changing while labelling; try again")


def _services_follow(m: Muslin, changed: list[tuple[Endpoint, Endpoint]], undo: list[Put]) -> None:
    """Endpoints whose labels or namespace changed join or leave services at once. When that
    fails, the records written get their old values back (`undo`) and the error is raised."""
    from muslin.control import services

    moved = [(services.Member.of(a), services.Member.of(b)) for a, b in changed
             if (a.labels, a.namespace) != (b.labels, b.namespace) and b.addresses]
    if moved and any(services.present(m, a.network) for a, _ in moved):
        try:
            with m.kernel() as k:
                services.members_changed(m, k, moved)
        except BaseException:
            m.store.txn([], undo)
            raise

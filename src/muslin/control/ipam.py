"""Stateful IPAM over a Store: allocations keyed by subnet, written atomically.

Keys (docs/architecture.md):
  ipam/<subnet-key>/ip/<ip>   {"owner", "container_id", "ifname"}
  ipam/<subnet-key>/last      the last address handed out in that subnet (round-robin)
  ipam-owner/<owner>          [[subnet, ip], ...] — the owner index
Every change writes the address records and the owner index in ONE txn guarded by
Compare()s, and is retried on Conflict, so parallel allocators (processes, hosts) never
hand out one address twice and a crash never leaves an address both free and in use.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from muslin.ipam.ranges import (
    describe_range_set,
    first_candidates,
    next_free,
    normalize_range,
    range_contains,
    range_set_of,
    validate_range_sets,
)
from muslin.model import keys
from muslin.model.errors import Conflict, Exhausted, Invalid, Unavailable
from muslin.model.types import IPAddress, IPInterface, IPNetwork, IPRange, RangeSet
from muslin.store.base import KV, Compare, Delete, Op, Put, Store

RETRIES = 200
OWNER_PREFIX = keys.IPAM_OWNERS
ip_key, last_key, owner_key = keys.ipam_ip, keys.ipam_last, keys.ipam_owner
Addr = tuple[IPInterface, IPAddress | None]
PROBES = 8  # candidates read one by one before listing every used address of a subnet
Entry = tuple[IPNetwork, IPAddress]  # one allocation: (subnet, address)


@dataclass(frozen=True)
class Allocation:
    """What one `take` did: the addresses (with gateways) it returns, the entries it newly
    allocated, and the round-robin cursors it moved (subnet, address written, value before)."""

    addrs: list[Addr]
    entries: list[Entry]
    cursors: list[tuple[IPNetwork, IPAddress, Any]]


def _check_owner(owner: str) -> None:
    if not owner or not isinstance(owner, str) or owner.startswith("/") or "//" in owner:
        raise Invalid(f"IPAM owner {owner!r} is not a valid owner key (e.g. cni/<containerID>/<ifname>)")


def _entries(kv: KV | None) -> list[tuple[IPNetwork, IPAddress]]:
    if kv is None:
        return []
    return [(ipaddress.ip_network(s), ipaddress.ip_address(i)) for s, i in kv.value]


def _index_value(entries: Iterable[tuple[IPNetwork, IPAddress]]) -> list[list[str]]:
    return [[str(s), str(i)] for s, i in entries]


class Ipam:
    def __init__(self, store: Store, retries: int = RETRIES) -> None:
        self.store = store
        self.retries = retries

    # --- retry loop --------------------------------------------------------------------
    def _retry(self, what: str, attempt):  # type: ignore[no-untyped-def]
        """Run attempt() until its txn commits; attempt returns (compares, ops, result)."""
        delay = 0.001
        for _ in range(self.retries):
            compares, ops, result = attempt()
            if not ops:
                return result
            try:
                self.store.txn(compares, ops)
                return result
            except Conflict:
                time.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 0.05)
        raise Unavailable(f"IPAM: {what}: too much contention, gave up after {self.retries} attempts")

    # --- reads -------------------------------------------------------------------------
    def _used(self, subnet: IPNetwork) -> dict[IPAddress, KV]:
        pre = keys.ipam_ips(subnet)
        return {ipaddress.ip_address(kv.key[len(pre):]): kv for kv in self.store.list(pre)}

    def _used_ips(self, subnet: IPNetwork) -> list[IPAddress]:
        """The taken addresses only: keys without their values when the store can list keys
        (SQLite), which keeps an allocation cheap with a thousand addresses in the subnet."""
        pre = keys.ipam_ips(subnet)
        names = self.store.keys(pre)
        cls, fam = (ipaddress.IPv4Address, socket.AF_INET) if subnet.version == 4 else \
            (ipaddress.IPv6Address, socket.AF_INET6)
        out = []
        for k in names:  # inet_pton + int: a fifth of ip_address()'s string parsing
            try:
                out.append(cls(int.from_bytes(socket.inet_pton(fam, k[len(pre):]), "big")))
            except OSError:
                out.append(ipaddress.ip_address(k[len(pre):]))
        return out

    def _next(self, rs: RangeSet, requested: IPAddress | None) -> tuple[IPAddress, IPRange]:
        """The address to hand out: the first of a few round-robin candidates with no key
        (one read each; the usual case is the first), else the full scan of the used keys
        (`next_free`). The txn's Compare(key, 0) still guards against a racing writer."""
        last = self._last(rs)
        if requested is None:
            for ip, r in first_candidates(rs, last, PROBES):
                if self.store.get(ip_key(r.subnet, ip)) is None:
                    return ip, r
        used: set[IPAddress] = set()
        for subnet in dict.fromkeys(r.subnet for r in rs):
            used.update(self._used_ips(subnet))
        return next_free(rs, used, last, requested)

    def _last(self, rs: RangeSet) -> IPAddress | None:
        """The set's last handed-out address: the most recently written `last` of its subnets."""
        best: KV | None = None
        for subnet in dict.fromkeys(r.subnet for r in rs):
            kv = self.store.get(last_key(subnet))
            if kv is not None and (best is None or kv.mod_revision > best.mod_revision):
                best = kv
        if best is None:
            return None
        try:
            return ipaddress.ip_address(best.value)
        except (TypeError, ValueError):
            return None

    def owners(self, subnet: IPNetwork) -> dict[IPAddress, str]:
        return {ip: kv.value.get("owner", "") for ip, kv in self._used(subnet).items()}

    def allocated(self, owner: str) -> list[tuple[IPNetwork, IPAddress]]:
        return _entries(self.store.get(owner_key(owner)))

    # --- allocate ----------------------------------------------------------------------
    def allocate(self, range_sets: Sequence[RangeSet], owner: str, container_id: str = "", ifname: str = "",
                 requested: Iterable[IPAddress] = ()) -> list[Addr]:
        """One address per range set, all in one txn (all-or-nothing).

        Requested addresses go to the range set containing them (Invalid if none does or
        two fall in one set). If the owner already holds an address in a set (a retried
        ADD), that address is returned again instead of a second one."""
        return self.take(range_sets, owner, container_id, ifname, requested).addrs

    def take(self, range_sets: Sequence[RangeSet], owner: str, container_id: str = "", ifname: str = "",
             requested: Iterable[IPAddress] = ()) -> Allocation:
        """`allocate`, also telling what this very call allocated (not what the owner held
        already): an undo gives back exactly that (`give_back`)."""
        _check_owner(owner)
        sets = validate_range_sets(range_sets)
        if not sets:
            return Allocation([], [], [])
        want: dict[int, IPAddress] = {}
        for ip in requested:
            if isinstance(ip, str):
                try:
                    ip = ipaddress.ip_address(ip.strip())
                except ValueError:
                    raise Invalid(f"requested address {ip!r} is not an IP address") from None
            i = range_set_of(sets, ip)
            if i is None:
                raise Invalid(f"requested address {ip} is outside the range "
                              f"{'; '.join(describe_range_set(s) for s in sets)}")
            if i in want and want[i] != ip:
                raise Invalid(f"requested addresses {want[i]} and {ip} fall in the same range set "
                              f"{describe_range_set(sets[i])}")
            want[i] = ip
        record = {"owner": owner, "container_id": container_id, "ifname": ifname}

        def attempt() -> tuple[list[Compare], list[Op], Allocation]:
            okv = self.store.get(owner_key(owner))
            held = _entries(okv)
            compares = [Compare(owner_key(owner), okv.mod_revision if okv else 0)]
            ops: list[Op] = []
            result: list[Addr] = []
            cursors: list[tuple[IPNetwork, IPAddress, Any]] = []
            new_entries = list(held)
            for i, rs in enumerate(sets):
                mine = [(s, ip) for s, ip in held if range_set_of([rs], ip) == 0]
                if mine:
                    s, ip = mine[0]
                    if i in want and want[i] != ip:
                        raise Conflict(f"{owner} already holds {ip} in {describe_range_set(rs)}, "
                                       f"not the requested {want[i]}")
                    r = next(r for r in rs if r.subnet == s)
                    result.append((ipaddress.ip_interface(f"{ip}/{s.prefixlen}"), r.gateway))
                    continue
                ip, r = self._next(rs, want.get(i))
                compares.append(Compare(ip_key(r.subnet, ip), 0))
                ops.append(Put(ip_key(r.subnet, ip), record))
                ops.append(Put(last_key(r.subnet), str(ip)))
                cur = self.store.get(last_key(r.subnet))
                cursors.append((r.subnet, ip, cur.value if cur else None))
                new_entries.append((r.subnet, ip))
                result.append((ipaddress.ip_interface(f"{ip}/{r.subnet.prefixlen}"), r.gateway))
            if ops:
                ops.append(Put(owner_key(owner), _index_value(new_entries)))
            return compares, ops, Allocation(result, new_entries[len(held):], cursors)

        return self._retry(f"allocating for {owner}", attempt)

    def reserve(self, subnet: IPNetwork, ip: IPAddress, owner: str, container_id: str = "",
                ifname: str = "") -> None:
        """Take exactly `ip` in `subnet` for owner (Docker --ip, gateways, aux addresses).
        Idempotent for the same owner; Conflict if someone else holds it."""
        _check_owner(owner)
        if ip.version != subnet.version or ip not in subnet:
            raise Invalid(f"{ip} is not inside subnet {subnet}")
        record = {"owner": owner, "container_id": container_id, "ifname": ifname}

        def attempt() -> tuple[list[Compare], list[Op], None]:
            kv = self.store.get(ip_key(subnet, ip))
            if kv is not None:
                holder = kv.value.get("owner", "")
                if holder == owner:
                    return [], [], None
                raise Conflict(f"{ip} in {subnet} is already in use by {holder}")
            okv = self.store.get(owner_key(owner))
            entries = _entries(okv) + [(subnet, ip)]
            compares = [Compare(ip_key(subnet, ip), 0), Compare(owner_key(owner), okv.mod_revision if okv else 0)]
            return compares, [Put(ip_key(subnet, ip), record), Put(owner_key(owner), _index_value(entries))], None

        self._retry(f"reserving {ip} in {subnet}", attempt)

    # --- release -----------------------------------------------------------------------
    def release(self, owner: str) -> list[IPAddress]:
        """Free every address of owner; idempotent. Returns the addresses freed."""
        _check_owner(owner)

        def attempt() -> tuple[list[Compare], list[Op], list[IPAddress]]:
            okv = self.store.get(owner_key(owner))
            if okv is None:
                return [], [], []
            compares = [Compare(owner_key(owner), okv.mod_revision)]
            ops: list[Op] = [Delete(owner_key(owner))]
            freed: list[IPAddress] = []
            for s, ip in _entries(okv):
                kv = self.store.get(ip_key(s, ip))
                if kv is not None and kv.value.get("owner") == owner:
                    compares.append(Compare(kv.key, kv.mod_revision))
                    ops.append(Delete(kv.key))
                    freed.append(ip)
            return compares, ops, freed

        return self._retry(f"releasing {owner}", attempt)

    def give_back(self, owner: str, alloc: Allocation) -> list[IPAddress]:
        """Undo one `take`: free exactly its entries, and only while `owner` holds them (the
        owner's other addresses stay), and put back the cursors it moved if nobody moved them
        since. Idempotent."""
        _check_owner(owner)
        wanted = set(alloc.entries)
        if not wanted:
            return []

        def attempt() -> tuple[list[Compare], list[Op], list[IPAddress]]:
            okv = self.store.get(owner_key(owner))
            held = _entries(okv)
            mine = [e for e in held if e in wanted]
            if okv is None or not mine:
                return [], [], []
            rest = [e for e in held if e not in wanted]
            compares = [Compare(okv.key, okv.mod_revision)]
            ops: list[Op] = [Put(okv.key, _index_value(rest)) if rest else Delete(okv.key)]
            for s, ip in mine:
                kv = self.store.get(ip_key(s, ip))
                if kv is not None and kv.value.get("owner") == owner:
                    compares.append(Compare(kv.key, kv.mod_revision))
                    ops.append(Delete(kv.key))
            for s, written, before in alloc.cursors:
                kv = self.store.get(last_key(s))
                if kv is not None and kv.value == str(written):
                    compares.append(Compare(kv.key, kv.mod_revision))
                    ops.append(Put(kv.key, before) if before is not None else Delete(kv.key))
            return compares, ops, [ip for _, ip in mine]

        return self._retry(f"giving back addresses of {owner}", attempt)

    def hand_over(self, owner: str, new_owner: str) -> list[IPAddress]:
        """Move every address of `owner` to `new_owner` (added to what it holds), in one txn."""
        _check_owner(owner)
        _check_owner(new_owner)

        def attempt() -> tuple[list[Compare], list[Op], list[IPAddress]]:
            okv, nkv = self.store.get(owner_key(owner)), self.store.get(owner_key(new_owner))
            if okv is None:
                return [], [], []
            moved = _entries(okv)
            compares = [Compare(okv.key, okv.mod_revision), Compare(owner_key(new_owner), nkv.mod_revision if nkv else 0)]
            ops: list[Op] = [Delete(okv.key), Put(owner_key(new_owner), _index_value(_entries(nkv) + moved))]
            for s, ip in moved:
                kv = self.store.get(ip_key(s, ip))
                if kv is not None and kv.value.get("owner") == owner:
                    compares.append(Compare(kv.key, kv.mod_revision))
                    ops.append(Put(kv.key, {**kv.value, "owner": new_owner}))
            return compares, ops, [ip for _, ip in moved]

        return self._retry(f"handing the addresses of {owner} to {new_owner}", attempt)

    def release_ip(self, subnet: IPNetwork, ip: IPAddress) -> bool:
        """Free one address whoever holds it; True if it was allocated."""

        def attempt() -> tuple[list[Compare], list[Op], bool]:
            kv = self.store.get(ip_key(subnet, ip))
            if kv is None:
                return [], [], False
            compares = [Compare(kv.key, kv.mod_revision)]
            ops: list[Op] = [Delete(kv.key)]
            owner = kv.value.get("owner", "")
            if owner:
                okv = self.store.get(owner_key(owner))
                if okv is not None:
                    rest = [(s, i) for s, i in _entries(okv) if not (s == subnet and i == ip)]
                    compares.append(Compare(okv.key, okv.mod_revision))
                    ops.append(Put(okv.key, _index_value(rest)) if rest else Delete(okv.key))
            return compares, ops, True

        return self._retry(f"releasing {ip} in {subnet}", attempt)

    def gc(self, subnets: Iterable[IPNetwork], keep_owners: Iterable[str], owner_prefix: str = "") -> list[str]:
        """Release every owner holding an address in `subnets` that is not in keep_owners.
        Only owners starting with owner_prefix are considered (e.g. 'cni/', so a CNI GC never
        frees a Docker endpoint's address on a shared subnet). Returns the owners released."""
        keep = set(keep_owners)
        gone: set[str] = set()
        for subnet in subnets:
            for ip, owner in self.owners(subnet).items():
                if owner.startswith(owner_prefix) and owner not in keep and owner not in gone:
                    if owner:
                        self.release(owner)
                    else:
                        self.release_ip(subnet, ip)
                    gone.add(owner)
        return sorted(gone)

    # --- pool status -------------------------------------------------------------------
    def free_in(self, rs: RangeSet) -> int:
        """How many addresses of the range set are free or soon free (stops counting at the
        first > 0)."""
        total = 0
        for r in rs:
            r = normalize_range(r)
            assert r.range_start is not None and r.range_end is not None
            size = int(r.range_end) - int(r.range_start) + 1
            if r.gateway is not None and range_contains(r, r.gateway):
                size -= 1
            if r.subnet.version == 4:
                size -= sum(1 for a in (r.subnet.network_address, r.subnet.broadcast_address)
                            if range_contains(r, a))
            # an address a retired link still holds counts as free: asking for it reaps at once
            used = sum(1 for ip, owner in self.owners(r.subnet).items()
                       if range_contains(r, ip) and ip != r.gateway and not owner.startswith(keys.REAP_OWNERS))
            total += max(0, size - used)
            if total > 0:
                return total
        return total

    def check_pools(self, sets: Sequence[RangeSet]) -> None:
        """Exhausted when a range set has no free address (CNI STATUS)."""
        for rs in sets:
            if self.free_in(rs) <= 0:
                raise Exhausted(f"address pool exhausted: no free address in {describe_range_set(rs)}")

    # --- helpers for callers -----------------------------------------------------------
    def record(self, subnet: IPNetwork, ip: IPAddress) -> dict[str, Any] | None:
        kv = self.store.get(ip_key(subnet, ip))
        return kv.value if kv else None

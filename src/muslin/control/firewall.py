"""The desired firewall of a state dir, and its one way to the kernel.

`desired` reads the store (plus what an operation is about to add or remove) into the
pure FirewallState; `sync` hands it to the kernel under this state dir's owner mark.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Callable, Iterable

from muslin.control.timings import NFT_PHASE, timed
from muslin.drivers.base import get_driver
from muslin.firewall.antispoof import Guard
from muslin.firewall.state import FirewallState, NetRule, PortRule
from muslin.model.types import Endpoint, Network
from muslin.plan import Step

if TYPE_CHECKING:
    from muslin.control.service import Muslin
    from muslin.dataplane.api import Kernel


def desired(m: Muslin, add_networks: Iterable[Network] = (), drop_networks: Iterable[str] = (),
            add_endpoints: Iterable[Endpoint] = (), drop_endpoints: Iterable[tuple[str, str]] = ()) -> FirewallState:
    """The firewall the store describes, with these networks/endpoints added or left out."""
    drop_n, drop_e = set(drop_networks), set(drop_endpoints)
    added = list(add_networks)
    nets = {n.name: n for n in m.list_networks() if n.name not in drop_n}
    nets.update({n.name: n for n in added})
    bridged = [n for n in nets.values() if get_driver(n.driver).bridged]
    bridge_of = {n.name: n.bridge for n in bridged}
    rules = tuple(NetRule(bridge=n.bridge, subnets=tuple(n.subnets), masquerade=n.masquerade and not n.internal,
                          internal=n.internal, isolate=n.isolate,
                          gateways=tuple(g.ip for g in get_driver(n.driver).gateways(n))) for n in bridged)
    eps = {(e.network, e.endpoint_id): e for e in m.endpoints()}
    eps.update({(e.network, e.endpoint_id): e for e in add_endpoints})
    ports = []
    for (net, eid), ep in sorted(eps.items()):
        if not ep.ports or net not in bridge_of or (net, eid) in drop_e:
            continue
        for p in ep.ports:
            for a in ep.addresses:
                if p.host_ip and ipaddress.ip_address(p.host_ip).version != a.version:
                    continue
                ports.append(PortRule(endpoint_id=ep.endpoint_id, protocol=p.protocol, host_ip=p.host_ip,
                                      host_port=p.host_port, container_ip=a.ip, container_port=p.container_port,
                                      bridge=bridge_of[net]))
    live = [e for key, e in eps.items() if key not in drop_e and e.network in nets]
    guarded = {n.name for n in bridged if n.spoofcheck}
    guards = tuple(Guard(e.host_ifname, e.mac, tuple(a.ip for a in e.addresses))
                   for e in live if e.network in guarded and e.host_ifname and e.mac)
    from muslin.control.policy import policy_input  # network policy (control/policy.py)

    return FirewallState(networks=rules, ports=tuple(ports), hold=bool(nets), guards=guards,
                         policy=policy_input(m, live, nets))


def deferred(m: Muslin, **changes: Iterable) -> Callable[[], FirewallState]:  # type: ignore[type-arg]
    """`desired(m, **changes)`, computed when the sync runs (under the firewall lock: a sync
    never writes a state read before another process's change that synced meanwhile)."""
    return lambda: desired(m, **changes)


def lock(m: Muslin):  # type: ignore[no-untyped-def]
    """One firewall sync of this state dir at a time, its desired state read inside."""
    from muslin.control.locks import flock

    return flock(m.state_dir / "locks" / "firewall.lock", True)


def sync(m: Muslin, k: Kernel, state: FirewallState | Callable[[], FirewallState] | None = None,
         services_after: bool = True) -> dict[str, str]:
    """Returns the previous value of each sysctl the sync changed. Timed as the phase
    `nft transaction` (muslind's metrics: its time and failures). When the sync replaced the
    whole table, the services are synced again (control/services.py)."""
    with lock(m):
        if state is None:
            state = desired(m)
        elif callable(state):
            state = state()
        with timed(m.timings, NFT_PHASE):
            changed = k.firewall_sync(state, m.owner)
    if services_after:
        from muslin.control import services

        services.after_firewall_sync(m, k)
    return changed


def step(m: Muslin, k: Kernel, state: FirewallState | Callable[[], FirewallState]) -> Step:
    """A plan step syncing to `state`; its undo syncs back to the store and restores the
    sysctls it changed (ip_forward, route_localnet)."""
    def undo(changed: dict[str, str]) -> None:
        sync(m, k)
        k.restore_sysctls(changed)

    return Step("firewall", lambda: sync(m, k, state), undo)


def docker_user(m: Muslin, k: Kernel, bridge: str, present: bool) -> None:
    """This bridge's accept pair in Docker's DOCKER-USER chain (when Docker runs), best effort."""
    import logging

    try:
        k.docker_user(m.owner_id, [bridge] if present else [], only=[bridge])
    except Exception as e:  # noqa: BLE001 - never fails a network operation; muslind re-syncs
        logging.getLogger("muslin").warning("DOCKER-USER rules for %s: %s", bridge, " ".join(str(e).split()))


def sync_docker_user(m: Muslin, k: Kernel) -> None:
    """Exactly this state dir's bridged networks have their pairs (muslind's periodic check)."""
    k.docker_user(m.owner_id, [n.bridge for n in m.list_networks() if get_driver(n.driver).bridged and n.bridge])

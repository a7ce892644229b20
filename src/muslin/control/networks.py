"""Use-cases on networks: create, ensure (CNI), delete, hand over.

Validate everything, then change anything, as one plan whose steps are undone exactly when a
later one fails. Each use-case takes the network's lock once, here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from muslin.control import firewall
from muslin.drivers.base import get_driver
from muslin.ipam.ranges import normalize_range, validate_range_sets
from muslin.model import keys, names
from muslin.model.errors import Conflict, Invalid, NotFound
from muslin.model.types import Network
from muslin.plan import Step, run

if TYPE_CHECKING:
    from muslin.control.service import Muslin
    from muslin.dataplane.api import Kernel


def normalize(net: Network) -> Network:
    """Fill defaults and validate a network completely; no side effects."""
    names.check_name(net.name)
    driver = get_driver(net.driver)
    sets = tuple(tuple(normalize_range(r) for r in rs) for rs in net.range_sets)
    validate_range_sets(sets)
    net = driver.check(net.evolve(range_sets=sets))
    if driver.needs_subnet and not net.range_sets:
        raise Invalid(f"network {net.name}: give at least one subnet")
    if driver.modes and net.mode not in driver.modes:
        raise Invalid(f"network {net.name}: mode {net.mode!r} is not one of {', '.join(driver.modes)}")
    return net


def check_conflicts(m: Muslin, net: Network) -> None:
    import ipaddress

    others = m.list_networks()
    if net.service_range:
        from muslin.control.services import check_range

        check_range(net.service_range, net, others)
    for other in others:
        if other.name == net.name:
            continue
        for mine in net.subnets:
            for theirs in other.subnets:
                if mine.version == theirs.version and mine.overlaps(theirs):
                    raise Conflict(f"subnet {mine} overlaps network {other.name!r} ({theirs})")
            theirs = ipaddress.ip_network(other.service_range) if other.service_range else None
            if theirs is not None and mine.version == theirs.version and mine.overlaps(theirs):
                raise Conflict(f"subnet {mine} overlaps the service range {theirs} of network {other.name!r}")
        if net.bridge and net.bridge == other.bridge:
            raise Conflict(f"bridge {net.bridge} is already used by network {other.name!r}")


def check_owner(m: Muslin, k: Kernel) -> None:
    """One state dir per host namespace: refuse before anything is made."""
    from muslin.firewall.compiler import owner_path, same_owner

    owner = k.firewall_owner()
    if owner and not same_owner(owner, m.owner):
        raise Conflict(f"this host namespace is managed by Muslin with state dir {owner_path(owner)}; use that "
                       "state dir (--state-dir, MUSLIN_STATE_DIR or the CNI config's dataDir): one state dir per "
                       "host namespace")


def create(m: Muslin, k: Kernel, net: Network) -> Network:
    return create_noting(m, k, net)[0]


def create_noting(m: Muslin, k: Kernel, net: Network) -> tuple[Network, dict[str, str]]:
    """`create`, also returning the previous value of each sysctl it changed."""
    net = normalize(net)
    driver = get_driver(net.driver)
    with m.lock(net.name, exclusive=True):
        if m.find_network(net.name) is not None:
            raise Conflict(f"network {net.name!r} already exists")
        check_conflicts(m, net)
        check_owner(m, k)
        driver.preflight(k, net)
        if driver.bridged and not net.bridge_mac:
            net = net.evolve(bridge_mac=names.random_mac())
        made: list[str] = []
        record: dict[str, Network] = {}

        def put() -> None:
            record["net"] = net.evolve(made=tuple(made))
            m.store.put(keys.network(net.name), record["net"].to_dict(), expect=0)

        done = run([*driver.setup_steps(k, net, made),
                    firewall.step(m, k, firewall.deferred(m, add_networks=[net])),
                    Step("network record", put, lambda _: m.store.delete(keys.network(net.name)))], m.timings)
        if driver.bridged:
            firewall.docker_user(m, k, net.bridge, present=True)
        return record["net"], done[-2]


def ensure(m: Muslin, k: Kernel, net: Network) -> tuple[Network, dict[str, str] | None]:
    """The stored network of that name if compatible, else create it (CNI). Also returns,
    when this call made it, the previous value of each sysctl that changed."""
    existing = m.find_network(net.name)
    if existing is None:
        try:
            return create_noting(m, k, net)
        except Conflict:
            existing = m.find_network(net.name)
            if existing is None:
                raise
    wanted = normalize(net)
    if existing.origin == "cni" and wanted.origin == "cni" and existing.spec() != wanted.spec():
        with m.lock(net.name, exclusive=True):
            if m.endpoints(net.name):
                raise Conflict(f"network {net.name!r} exists with a different configuration and is in use")
            teardown(m, k, existing)
        return create_noting(m, k, net)
    return existing, None


def delete(m: Muslin, k: Kernel, name: str, force: bool = False) -> None:
    from muslin.control import endpoints

    from muslin.control import services

    with m.lock(name, exclusive=True):
        net = m.get_network(name)
        eps = m.endpoints(name)
        if eps and not force:
            raise Conflict(f"network {name!r} has {len(eps)} endpoint(s); disconnect them first")
        svcs = services.list_services(m, name)
        if svcs and not force:
            raise Conflict(f"network {name!r} has {len(svcs)} service(s) ({', '.join(s.name for s in svcs[:5])}); "
                           "remove them first (muslin service rm)")
        services.remove_all(m, k, name)
        for ep in eps:
            endpoints.detach_locked(m, k, net, ep)
        teardown(m, k, net)


def teardown(m: Muslin, k: Kernel, net: Network) -> None:
    """Remove a network's kernel objects, firewall entries and record (lock held). The
    record goes last: a failure half-way leaves it, and removing again finishes the job."""
    driver = get_driver(net.driver)
    driver.teardown(k, net)
    firewall.sync(m, k, firewall.deferred(m, drop_networks=[net.name]))
    m.store.delete(keys.network(net.name))
    if driver.bridged:
        firewall.docker_user(m, k, net.bridge, present=False)


def repair(m: Muslin, k: Kernel, name: str) -> None:
    """Make a network's shared kernel objects again when they are gone (deleted by hand)."""
    with m.lock(name, exclusive=False):
        repair_locked(k, get(m, name))


def repair_locked(k: Kernel, net: Network) -> None:
    driver = get_driver(net.driver)
    if not driver.ready(k, net):
        run(driver.setup_steps(k, net, []))


def remove_if_unused(m: Muslin, k: Kernel, name: str) -> None:
    """A CNI network goes with its last endpoint."""
    with m.lock(name, exclusive=True):
        net = m.find_network(name)
        if net is None or net.origin != "cni" or m.has_endpoints(name):
            return
        if m.store.keys(keys.services(name), limit=1):
            return  # its services keep it (their removal takes it)
        teardown(m, k, net)


def hand_over(m: Muslin, k: Kernel, name: str, origin: str = "cni") -> None:
    """Its creator lets a network go: with origin 'cni' it is removed now when unused, else
    with its last CNI endpoint (Docker deleting a network that Podman containers still use)."""
    with m.lock(name, exclusive=True):
        kv = m.store.get(keys.network(name))
        if kv is None:
            return
        net = Network.from_dict(kv.value)
        if net.origin != origin:
            m.store.put(keys.network(name), net.evolve(origin=origin).to_dict(), expect=kv.mod_revision)
    if origin == "cni":
        remove_if_unused(m, k, name)


def get(m: Muslin, name: str) -> Network:
    net = m.find_network(name)
    if net is None:
        raise NotFound(f"network {name!r} does not exist")
    return net

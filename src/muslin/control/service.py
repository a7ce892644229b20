"""`Muslin`: the use-cases every front-end calls (networks, endpoints, ports, sandboxes'
building blocks), over one store, one state dir and one kernel.

Front-ends parse, call one of these methods and format the answer; they never reach the
dataplane. The kernel is reached through a `Kernel` (dataplane/api.py): the real one by
default, the in-memory fake in tests. Its work is done in the namespace this process
runs in (the host).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from muslin.control import endpoints, firewall, networks
from muslin.control.ipam import Ipam
from muslin.control.locks import flock
from muslin.firewall.compiler import owner_mark
from muslin.model import keys
from muslin.model.errors import Invalid
from muslin.model.types import AttachRequest, Endpoint, IPNetwork, Network, PortMapping
from muslin.store import default_state_dir, open_store
from muslin.store.base import Store

if TYPE_CHECKING:
    from muslin.control.reaper import Reaper
    from muslin.control.timings import Timings
    from muslin.dataplane.api import Kernel


def real_kernel() -> Kernel:
    from muslin.dataplane.kernel import RealKernel

    return RealKernel()


class Muslin:
    # muslind sets one Reaper for the whole process (control/reaper.py): detached endpoints'
    # links are then retired at once and deleted in batches; without one they go at once.
    default_reaper: Reaper | None = None
    # and one Timings (control/timings.py): where the time of each operation goes
    default_timings: Timings | None = None

    def __init__(self, store: Store | None = None, state_dir: str | Path | None = None,
                 kernel: Callable[[], Kernel] | None = None) -> None:
        d = Path(state_dir or default_state_dir())
        if not d.is_absolute():
            raise Invalid(f"state dir {str(d)!r} must be an absolute path")
        self.state_dir = d
        self.owner = owner_mark(str(d))  # this state dir's mark on the host namespace's firewall
        self.owner_id = hashlib.sha256(str(d).encode()).hexdigest()[:12]
        self.store = store if store is not None else open_store(str(d))
        self._store_id = _file_id(self.store)
        self.ipam = Ipam(self.store)
        self._kernel = kernel or real_kernel
        self.reaper = Muslin.default_reaper
        self.timings = Muslin.default_timings
        if self.reaper is not None and self.store.keys(keys.ipam_owner(keys.REAP_OWNERS), limit=1):
            self.reaper.note(self)  # retired by a muslind that died before it reaped

    def close(self) -> None:
        self.store.close()

    def store_is_current(self) -> bool:
        """False when the store's file was replaced since it was opened (a kept connection is stale)."""
        return _file_id(self.store) == self._store_id

    @contextlib.contextmanager
    def kernel(self) -> Iterator[Kernel]:
        k = self._kernel()
        try:
            yield k
        finally:
            k.close()

    def lock(self, network: str, exclusive: bool):  # type: ignore[no-untyped-def]
        return flock(self.state_dir / "locks" / f"net-{network}.lock", exclusive)

    # -- reads ----------------------------------------------------------------------------
    def find_network(self, name: str) -> Network | None:
        kv = self.store.get(keys.network(name))
        return Network.from_dict(kv.value) if kv else None

    def get_network(self, name: str) -> Network:
        return networks.get(self, name)

    def list_networks(self) -> list[Network]:
        return [Network.from_dict(kv.value) for kv in self.store.list(keys.NETWORKS)]

    def endpoints(self, network: str | None = None) -> list[Endpoint]:
        return [Endpoint.from_dict(kv.value) for kv in self.store.list(keys.endpoints(network))]

    def has_endpoints(self, network: str) -> bool:
        return bool(self.store.keys(keys.endpoints(network), limit=1))

    def find_endpoint(self, network: str, endpoint_id: str) -> Endpoint | None:
        kv = self.store.get(keys.endpoint(network, endpoint_id))
        return Endpoint.from_dict(kv.value) if kv else None

    def normalize(self, net: Network) -> Network:
        return networks.normalize(net)

    # -- networks ---------------------------------------------------------------------------
    def create_network(self, net: Network) -> Network:
        with self.kernel() as k:
            return networks.create(self, k, net)

    def ensure_network(self, net: Network) -> Network:
        with self.kernel() as k:
            return networks.ensure(self, k, net)[0]

    def delete_network(self, name: str, force: bool = False) -> None:
        with self.kernel() as k:
            networks.delete(self, k, name, force)

    def repair_network(self, name: str) -> None:
        with self.kernel() as k:
            networks.repair(self, k, name)

    def hand_over(self, name: str, origin: str = "cni") -> None:
        with self.kernel() as k:
            networks.hand_over(self, k, name, origin)

    def remove_if_unused(self, name: str) -> None:
        with self.kernel() as k:
            networks.remove_if_unused(self, k, name)

    # -- endpoints -------------------------------------------------------------------------
    def attach(self, req: AttachRequest) -> Endpoint:
        with self.kernel() as k:
            return endpoints.attach(self, k, req)

    def ensure_and_attach(self, net: Network, req: AttachRequest, join: bool = False) -> Endpoint:
        with self.kernel() as k:
            return endpoints.ensure_and_attach(self, k, net, req, join)

    def detach(self, network: str, endpoint_id: str, owner: str = "", netns: str = "", ifname: str = "") -> None:
        with self.kernel() as k:
            endpoints.detach(self, k, network, endpoint_id, owner, netns, ifname)

    def check(self, network: str, endpoint_id: str, netns: str = "") -> Endpoint:
        with self.kernel() as k:
            return endpoints.check(self, k, network, endpoint_id, netns)

    def gc(self, network: str, keep: set[str], owner_prefix: str = "") -> list[str]:
        with self.kernel() as k:
            return endpoints.gc(self, k, network, keep, owner_prefix)

    def reap(self) -> int:
        with self.kernel() as k:
            return endpoints.reap(self, k)

    def retired_links(self) -> list[str]:
        with self.kernel() as k:
            return k.retired_links()

    def set_ports(self, network: str, endpoint_id: str, ports: tuple[PortMapping, ...]) -> Endpoint:
        with self.kernel() as k:
            return endpoints.set_ports(self, k, network, endpoint_id, ports)

    def set_identity(self, network: str, endpoint_id: str, **changes) -> Endpoint:  # type: ignore[no-untyped-def]
        """Change an endpoint's name, aliases, labels or namespace (control/identity.py)."""
        from muslin.control import identity, policy

        before = self.find_endpoint(network, endpoint_id)
        ep = identity.update(self, network, endpoint_id, **changes)
        if before is not None and (before.labels, before.namespace) != (ep.labels, ep.namespace):
            policy.identity_changed(self)  # what network policy selects may have changed
        return ep

    # -- services (control/services.py) ---------------------------------------------------
    def create_service(self, name: str, network: str, ports, selector: dict[str, str], vip=None,  # type: ignore[no-untyped-def]
                       affinity: int = 0, namespace: str = "default"):
        from muslin.control import services

        with self.kernel() as k:
            return services.create(self, k, name, network, ports, selector, vip, affinity, namespace)

    def remove_service(self, name: str, network: str | None = None):  # type: ignore[no-untyped-def]
        from muslin.control import services

        with self.kernel() as k:
            return services.remove(self, k, name, network, origin="")

    def list_services(self, network: str | None = None):  # type: ignore[no-untyped-def]
        from muslin.control import services

        return services.list_services(self, network)

    def find_service(self, name: str, network: str | None = None):  # type: ignore[no-untyped-def]
        from muslin.control import services

        return services.find(self, name, network)

    def sync_services(self) -> int:
        from muslin.control import services

        with self.kernel() as k:
            return services.resync(self, k)

    # -- firewall and host facts -------------------------------------------------------------
    def firewall_state(self):  # type: ignore[no-untyped-def]
        return firewall.desired(self)

    def sync_firewall(self) -> None:
        with self.kernel() as k:
            firewall.sync(self, k)

    def sync_docker_user(self) -> None:
        with self.kernel() as k:
            firewall.sync_docker_user(self, k)

    def host_routes(self) -> list[IPNetwork]:
        with self.kernel() as k:
            return k.host_routes()

    def port_free(self, protocol: str, host_ip: str, port: int) -> bool:
        with self.kernel() as k:
            return k.port_free(protocol, host_ip, port)

    def link_exists(self, name: str) -> bool:
        with self.kernel() as k:
            return k.link(name) is not None


def _file_id(store: Store) -> tuple[int, int] | None:
    try:
        st = os.stat(store.path)  # type: ignore[attr-defined] # an SQLite store's file
    except (AttributeError, OSError):
        return None
    return st.st_dev, st.st_ino


def open_muslin(store_url: str, state_dir: str) -> Muslin:
    """A Muslin on the store named by `store_url` (etcd://, a .db path or a directory)."""
    return Muslin(open_store(store_url or state_dir), state_dir)


def from_env() -> Muslin:
    """A Muslin on the state directory named by MUSLIN_STATE_DIR (or the default)."""
    return Muslin(state_dir=os.environ.get("MUSLIN_STATE_DIR") or None)




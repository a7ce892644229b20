"""Who a Docker endpoint is: its container's name, aliases and labels, asked of dockerd.

The remote driver API never tells a driver the container's name or its `--network-alias`
(recipes.md: "Aliases never reach the driver"), so after Join muslind asks dockerd over its
API socket, by endpoint id: `GET /networks/<id>` lists the network's containers with their
EndpointID, `GET /containers/<id>/json` has the name, the aliases on that network and the
labels. Best effort and asynchronous: Join never waits for it (dockerd lists the container
only once Join has returned), a lookup retries for LOOKUP_FOR seconds, and a failure only
leaves the endpoint without DNS names (Docker's own resolver still finds it).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from typing import Any, Callable
from urllib.parse import quote

from muslin.model.names import is_dns_name, is_label_key, is_label_value

log = logging.getLogger("muslin.docker.names")

API_VERSION = "v1.41"
LOOKUP_FOR = 60.0  # seconds a lookup keeps trying
MAX_LOOKUPS = 16  # at once


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def identity_of(network: dict[str, Any], container: dict[str, Any], endpoint_id: str) -> dict[str, Any]:
    """name, aliases, labels of the container holding `endpoint_id`, from dockerd's answers."""
    name = str(container.get("Name") or "").lstrip("/")
    aliases: list[str] = []
    for net in ((container.get("NetworkSettings") or {}).get("Networks") or {}).values():
        if (net or {}).get("EndpointID") == endpoint_id:
            aliases = [a for a in (net.get("Aliases") or []) + (net.get("DNSNames") or []) if isinstance(a, str)]
    labels = {k: v for k, v in ((container.get("Config") or {}).get("Labels") or {}).items()
              if isinstance(v, str) and is_label_key(k) and is_label_value(v)}
    aliases = [a for a in dict.fromkeys(aliases) if a != name and is_dns_name(a)]
    return {"name": name if is_dns_name(name) else "", "aliases": tuple(aliases), "labels": labels,
            "container": str(container.get("Id") or ""), "network_name": str(network.get("Name") or "")}


class DockerNames:
    """Looks endpoints up in dockerd and hands what it finds to `found(network, endpoint_id, identity)`."""

    def __init__(self, api_socket: str, found: Callable[[str, str, dict[str, Any]], None]) -> None:
        self.path = api_socket
        self.found = found
        self.busy: set[str] = set()
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(MAX_LOOKUPS)

    def get(self, url: str) -> Any:
        c = _Unix(self.path, 10)
        try:
            c.request("GET", f"/{API_VERSION}{url}", headers={"Host": "docker"})
            r = c.getresponse()
            body = r.read()
            if r.status == 404:
                return None
            if r.status != 200:
                raise OSError(f"dockerd answered {r.status} to GET {url}")
            return json.loads(body)
        finally:
            c.close()

    def lookup(self, network_id: str, endpoint_id: str) -> dict[str, Any] | None:
        net = self.get(f"/networks/{quote(network_id)}")
        if not net:
            return None
        for cid, c in (net.get("Containers") or {}).items():
            if (c or {}).get("EndpointID") == endpoint_id:
                container = self.get(f"/containers/{quote(cid)}/json")
                return identity_of(net, container, endpoint_id) if container else None
        return None

    def lookup_later(self, network_id: str, endpoint_id: str, network: str) -> None:
        """Find the endpoint's container in the background and report it (once)."""
        with self.lock:
            if endpoint_id in self.busy:
                return
            self.busy.add(endpoint_id)
        threading.Thread(target=self._run, args=(network_id, endpoint_id, network), daemon=True,
                         name=f"docker-names-{endpoint_id[:8]}").start()

    def _run(self, network_id: str, endpoint_id: str, network: str) -> None:
        try:
            with self.slots:
                end = time.monotonic() + LOOKUP_FOR
                delay = 0.05
                while time.monotonic() < end:
                    try:
                        got = self.lookup(network_id, endpoint_id)
                    except (OSError, ValueError, http.client.HTTPException) as e:
                        log.debug("dockerd lookup of endpoint %s: %s", endpoint_id[:12], e)
                        got = None
                    if got is not None:
                        self.found(network, endpoint_id, got)
                        return
                    time.sleep(delay)
                    delay = min(1.0, delay * 2)
                log.info("endpoint %s: dockerd did not list its container within %.0f s (no DNS name)",
                         endpoint_id[:12], LOOKUP_FOR)
        except Exception as e:  # noqa: BLE001 - best effort, never fatal
            log.warning("endpoint %s: naming it failed: %s", endpoint_id[:12], e)
        finally:
            with self.lock:
                self.busy.discard(endpoint_id)

"""muslind's HTTP endpoint on --metrics-address (stdlib http.server, one thread per request):
GET /metrics (Prometheus text), /topology (the page), /topology.svg, /topology.json,
/topology.dot. Read-only: anything else is 404 (405 for other methods)."""

from __future__ import annotations

import http.server
import logging
import socket
import socketserver
import threading
from typing import Callable

from muslin.model.errors import Invalid, Unavailable

log = logging.getLogger("muslind.web")
Route = Callable[[], tuple[str, bytes]]  # -> (content type, body)


def parse_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:9473', '[::1]:9473', ':9473' (all addresses) -> (host, port); Invalid otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f"--metrics-address {text!r}: use HOST:PORT (e.g. 127.0.0.1:9473)")
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "WebServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("http: " + fmt, *args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        route = self.server.routes.get(path)
        if route is None:
            self._send(404, "text/plain; charset=utf-8", f"not found: {path} (try /metrics or /topology)\n".encode())
            return
        try:
            ctype, body = route()
        except Exception as e:  # noqa: BLE001 - one line to the client, the trace to the log
            log.warning("GET %s: %s", path, " ".join(str(e).split()))
            self._send(500, "text/plain; charset=utf-8", f"error: {' '.join(str(e).split())}\n".encode())
            return
        self._send(200, ctype, body)

    def do_POST(self) -> None:
        self._send(405, "text/plain; charset=utf-8", b"read-only: GET /metrics or /topology\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class WebServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, routes: dict[str, Route]) -> None:
        self.routes = routes
        host, port = parse_address(address)
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise Unavailable(f"--metrics-address {address}: cannot listen: {e.strerror or e}") from None
        self.url = f"http://{address}"

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="web", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

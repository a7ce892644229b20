"""The plugin's HTTP server on a Unix socket (stdlib only).

Docker POSTs `/<Interface>.<Method>` with a JSON body (often empty, never a Content-Type)
and wants status 200 with a JSON body. A MuslinError becomes `{"Err": msg}` for
NetworkDriver calls and `{"Error": msg}` for IpamDriver calls (status 200); an unknown
method is 404; an unreadable body is 400.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from typing import Any, Callable

from muslin import events
from muslin.docker import types as T
from muslin.model.errors import Invalid, MuslinError, Unavailable

log = logging.getLogger("muslin.docker.server")
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
Handler = Callable[[dict[str, Any]], Any]


def _out(resp: Any) -> dict[str, Any]:
    if resp is None:
        return {}
    if isinstance(resp, dict):
        return resp
    return resp.to_json()


def routes(driver: Any | None, ipam: Any | None) -> dict[str, Handler]:
    """Path -> handler(body dict) -> response object (with to_json) / dict / None."""
    r: dict[str, Handler] = {}
    implements = []
    if driver is not None:
        implements.append("NetworkDriver")
        r.update({
            "/NetworkDriver.GetCapabilities": lambda b: driver.get_capabilities(),
            "/NetworkDriver.CreateNetwork": lambda b: driver.create_network(T.CreateNetworkRequest.from_json(b)),
            "/NetworkDriver.DeleteNetwork": lambda b: driver.delete_network(T.NetworkRequest.from_json(b)),
            "/NetworkDriver.CreateEndpoint": lambda b: driver.create_endpoint(T.CreateEndpointRequest.from_json(b)),
            "/NetworkDriver.EndpointOperInfo": lambda b: driver.endpoint_oper_info(T.EndpointRequest.from_json(b)),
            "/NetworkDriver.DeleteEndpoint": lambda b: driver.delete_endpoint(T.EndpointRequest.from_json(b)),
            "/NetworkDriver.Join": lambda b: driver.join(T.JoinRequest.from_json(b)),
            "/NetworkDriver.Leave": lambda b: driver.leave(T.EndpointRequest.from_json(b)),
            "/NetworkDriver.ProgramExternalConnectivity": lambda b: driver.program_external_connectivity(
                T.ProgramExternalConnectivityRequest.from_json(b)),
            "/NetworkDriver.RevokeExternalConnectivity": lambda b: driver.revoke_external_connectivity(
                T.EndpointRequest.from_json(b)),
            "/NetworkDriver.DiscoverNew": lambda b: {},
            "/NetworkDriver.DiscoverDelete": lambda b: {},
        })
    if ipam is not None:
        implements.append("IpamDriver")
        r.update({
            "/IpamDriver.GetCapabilities": lambda b: ipam.get_capabilities(),
            "/IpamDriver.GetDefaultAddressSpaces": lambda b: ipam.get_default_address_spaces(),
            "/IpamDriver.RequestPool": lambda b: ipam.request_pool(T.RequestPoolRequest.from_json(b)),
            "/IpamDriver.ReleasePool": lambda b: ipam.release_pool(T.ReleasePoolRequest.from_json(b)),
            "/IpamDriver.RequestAddress": lambda b: ipam.request_address(T.RequestAddressRequest.from_json(b)),
            "/IpamDriver.ReleaseAddress": lambda b: ipam.release_address(T.ReleaseAddressRequest.from_json(b)),
        })
    r["/Plugin.Activate"] = lambda b: {"Implements": list(implements)}
    return r


def dispatch(table: dict[str, Handler], path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
    """Run one call: (HTTP status, JSON body). Never raises."""
    errkey = "Error" if path.startswith("/IpamDriver.") else "Err"
    handler = table.get(path)
    if handler is None:
        return 404, {errkey: f"muslin: method {path.lstrip('/')[:80]} is not implemented"}
    try:
        body = T.parse_body(raw)
    except Invalid as e:
        return 400, {errkey: str(e)}
    t0 = time.monotonic()
    try:
        resp = _out(handler(body))
    except MuslinError as e:
        log.info("%s failed (%s): %s", path[1:], e.kind, e)
        _measured(path, t0, e.kind)
        return 200, {errkey: _one_line(str(e))}
    except Exception as e:  # last resort: one line to Docker, the trace to our log
        log.exception("%s crashed", path[1:])
        _measured(path, t0, "internal")
        return 200, {errkey: _one_line(f"muslin internal error in {path[1:]}: {type(e).__name__}: {e}")}
    log.debug("%s ok in %.1f ms", path[1:], (time.monotonic() - t0) * 1000)
    _measured(path, t0, "")
    return 200, resp


def _measured(path: str, t0: float, error: str) -> None:
    """muslind's metrics: requests and latency per method, errors by kind (muslin/events.py)."""
    if events.LISTENERS:
        events.emit("docker_request", method=path[1:], seconds=time.monotonic() - t0, error=error)
        if error:
            events.emit("error", source="docker", kind=error)


def _one_line(s: str) -> str:
    return " ".join(s.split())[:500]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "PluginServer"

    def address_string(self) -> str:  # client_address is '' on Unix sockets
        return "docker"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("http: " + fmt, *args)

    def do_POST(self) -> None:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = 0
        raw = self.rfile.read(n) if n > 0 else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = self._read_chunked()
        status, body = dispatch(self.server.table, self.path.split("?")[0], raw)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_chunked(self) -> bytes:
        out = b""
        while True:
            size = int(self.rfile.readline().strip().split(b";")[0] or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return out
            out += self.rfile.read(size)
            self.rfile.readline()

    def do_GET(self) -> None:
        self.send_error(405, "only POST")


class PluginServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, table: dict[str, Handler]) -> None:
        self.table = table
        self.path = path
        prepare_socket_path(path)
        super().__init__(path, _Handler)
        os.chmod(path, 0o660)

    def close(self) -> None:
        self.server_close()
        remove_socket(self.path)


def prepare_socket_path(path: str) -> None:
    """Create the parent directory; remove a stale socket; refuse if another server answers."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise Invalid(f"{path} exists and is not a socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(path)
    except OSError:
        os.unlink(path)  # stale
        return
    finally:
        s.close()
    raise Unavailable(f"another server already listens on {path}")


def remove_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def serve_in_thread(server: socketserver.BaseServer, name: str) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True)
    t.start()
    return t

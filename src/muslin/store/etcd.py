"""EtcdStore: the Store protocol on etcd 3.4 through its HTTP JSON gateway (/v3/).

The gateway is plain HTTP + JSON (keys and values base64), so the client is a thin
layer over http.client: every call is one POST, on a kept-alive connection from a small
pool. Watches are long-lived streamed POSTs read by a helper thread (open_watch: one
stream for as long as the watch lives, with TCP keepalive and etcd's progress
notifications); a dropped stream is reopened from the next revision with backoff, so
resuming loses nothing (a compacted revision raises Compacted). `stats` counts calls,
streams, events and bytes (the benchmarks read it).
Values are stored as JSON text. An unreachable etcd raises Unavailable with one line.

TLS (https endpoints, `etcds://` in open_store): a CA file, a client certificate and key;
etcd's user/password authentication: a token from /v3/auth/authenticate sent as the
Authorization header, fetched again when etcd says it is no longer valid. Several
endpoints: a call goes to the last one that answered; when it cannot be reached the
next is tried, and a read (or another call that is safe to repeat) also moves on when a
member fails in the middle or answers that it cannot serve (no leader, timed out).
Misconfiguration (an untrusted certificate, no client certificate where etcd asks for
one, a wrong password, a user without permission) raises Invalid naming the cause.
"""

from __future__ import annotations

import base64
import http.client
import json
import queue
import select
import socket
import ssl
import threading
import time
from collections import Counter
from typing import Any, Iterator, NamedTuple
from urllib.parse import urlsplit

from muslin.model.errors import Conflict, Invalid, NotFound, Unavailable
from muslin.store.base import KV, Compacted, Compare, Delete, EtcdOptions, Event, Op, Put, iterate

CALL_TIMEOUT = 5.0
HEALTH_TIMEOUT = 2.0
POOL = 4  # idle connections kept for calls (one call = one request on a kept-alive connection)
KEEPALIVE = (10, 5, 3)  # a watch stream's TCP keepalive: idle s, interval s, probes (a dead peer in ~25 s)
# gRPC codes etcd puts in its JSON errors
UNAUTHENTICATED, PERMISSION_DENIED, DEADLINE_EXCEEDED, UNAVAILABLE = 16, 7, 4, 14


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s) if s else b""


def _prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with prefix (etcd's 'prefix' trick)."""
    b = bytearray(prefix.encode())
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return _b64(bytes(b))
        b.pop()
    return _b64(b"\0")  # every key


class Endpoint(NamedTuple):
    tls: bool
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _endpoint(e: str, tls: bool = False) -> Endpoint:
    if "://" not in e:
        e = ("https://" if tls else "http://") + e
    u = urlsplit(e)
    try:
        port = u.port or 2379
    except ValueError:
        port = 0
    if u.scheme not in ("http", "https") or not u.hostname or not port or u.path not in ("", "/"):
        raise Invalid(f"etcd endpoint {e!r} is not of the form http://host:port or https://host:port")
    return Endpoint(u.scheme == "https", u.hostname, port)


def _value(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:  # written by someone else: hand back the text
        return raw.decode(errors="replace")


def _kv(d: dict[str, Any]) -> KV:
    return KV(key=_unb64(d["key"]).decode(), value=_value(_unb64(d.get("value", ""))),
              create_revision=int(d.get("create_revision", 0)), mod_revision=int(d.get("mod_revision", 0)),
              lease=int(d.get("lease", 0)))


def ssl_context(o: EtcdOptions) -> ssl.SSLContext:
    """The client's TLS context: the CA file (else the system's CAs), the client certificate."""
    try:
        ctx = ssl.create_default_context(cafile=o.ca or None)
    except FileNotFoundError:
        raise Invalid(f"etcd CA file {o.ca}: no such file") from None
    except (ssl.SSLError, OSError, ValueError) as e:
        raise Invalid(f"etcd CA file {o.ca}: not a PEM CA certificate ({_ssl_reason(e)})") from None
    if o.key and not o.cert:
        raise Invalid(f"etcd client key {o.key} given without its certificate")
    if o.cert:
        try:
            ctx.load_cert_chain(o.cert, o.key or None)
        except FileNotFoundError as e:
            raise Invalid(f"etcd client certificate or key: {e.filename or o.cert}: no such file") from None
        except (ssl.SSLError, OSError) as e:
            raise Invalid(f"etcd client certificate {o.cert} and key {o.key or o.cert} do not load: "
                          f"{_ssl_reason(e)}") from None
    return ctx


def _ssl_reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return e.verify_message or str(e)
    if isinstance(e, ssl.SSLError) and e.reason:
        return e.reason.lower().replace("_", " ")
    return str(e) or type(e).__name__


REFUSALS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN", "HANDSHAKE_FAILURE",
            "ACCESS_DENIED", "UNSUPPORTED_CERTIFICATE", "DECRYPT_ERROR")


class EtcdStore:
    """Store on etcd 3.4. `endpoints`: ["host:port", "http://host:port", "https://host:port", ...]
    (bare host:port: https when `tls`); `options`: CA, client certificate, user and password."""

    def __init__(self, endpoints: list[str] | str, timeout: float = CALL_TIMEOUT, prefix: str = "",
                 options: EtcdOptions | None = None, tls: bool = False) -> None:
        """`prefix` namespaces every key (several stores can share one etcd)."""
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        if not endpoints:
            raise Invalid("etcd store: no endpoint given")
        self.options = options or EtcdOptions()
        tls = tls or self.options.tls
        self.endpoints = [_endpoint(e.strip(), tls) for e in endpoints]
        plain = [str(e) for e in self.endpoints if not e.tls]
        if self.options.tls and plain:
            raise Invalid(f"etcd TLS options given, but {', '.join(plain)} is plain http (use etcds://)")
        if self.options.user and not self.options.password:
            raise Invalid(f"etcd user {self.options.user!r} has no password")
        if self.options.password and not self.options.user:
            raise Invalid("an etcd password was given without a user")
        self._ssl = ssl_context(self.options) if any(e.tls for e in self.endpoints) else None
        self.timeout = timeout
        self.prefix = prefix
        self._cur = 0
        self._token = ""
        self._auth_lock = threading.RLock()
        self._closed = threading.Event()
        self._streams: set[http.client.HTTPConnection] = set()
        self._idle: list[tuple[http.client.HTTPConnection, Endpoint]] = []
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()

    # -- transport ---------------------------------------------------------------------
    def _where(self) -> str:
        return ",".join(map(str, self.endpoints))

    def _new_conn(self, ep: Endpoint, timeout: float) -> http.client.HTTPConnection:
        if ep.tls:
            return http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)

    def _tls_problem(self, e: BaseException, ep: Endpoint) -> str:
        """One line for a TLS failure that is a matter of configuration, else ''."""
        if not ep.tls or not isinstance(e, ssl.SSLError):
            return ""
        if isinstance(e, ssl.SSLCertVerificationError):
            msg = e.verify_message or str(e)
            if "mismatch" in msg.lower() or "not valid for" in msg.lower():
                return f"etcd at {ep}: its TLS certificate is not valid for {ep.host} ({msg})"
            by = f"the CA in {self.options.ca}" if self.options.ca else "the system's CAs"
            return f"etcd at {ep}: its TLS certificate is not trusted by {by} ({msg})"
        reason = (e.reason or "").upper()
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
            return f"etcd at {ep} does not speak TLS (use etcd:// for it)"
        if any(r in reason for r in REFUSALS):
            return self._refused(ep, _ssl_reason(e))
        return ""

    def _refused(self, ep: Endpoint, why: str) -> str:
        if not self.options.cert:
            return f"etcd at {ep} requires a client certificate, and none was given"
        return f"etcd at {ep} refused the client certificate {self.options.cert} ({why}; is it signed by a CA etcd trusts?)"

    def _connect(self, timeout: float | None) -> tuple[http.client.HTTPConnection, Endpoint]:
        """A connected HTTP(S) connection to the first endpoint that takes one, from the last good."""
        last: Exception | None = None
        problem = ""
        n = len(self.endpoints)
        start = self._cur
        for i in range(n):
            idx = (start + i) % n
            ep = self.endpoints[idx]
            conn = self._new_conn(ep, self.timeout)
            try:
                conn.connect()
                conn.sock.settimeout(timeout)  # None for watch streams: they wait for events
            except OSError as e:
                conn.close()
                problem = problem or self._tls_problem(e, ep) or self._speaks_plain(e, ep)
                last = e
                continue
            self._cur = idx
            self.stats["connections"] += 1
            return conn, ep
        if problem:
            raise Invalid(problem)
        raise Unavailable(f"etcd at {self._where()} is unreachable: {_reason(last)}")

    def _skip(self, ep: Endpoint) -> None:
        """Prefer the endpoint after `ep` from now on (it failed in the middle of a call)."""
        try:
            i = self.endpoints.index(ep)
        except ValueError:
            return
        if self._cur == i:
            self._cur = (i + 1) % len(self.endpoints)

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.options.user:
            token = self._auth_token()
            if token:
                h["Authorization"] = token
        return h

    def _auth_token(self) -> str:
        with self._auth_lock:
            if not self._token:
                out = self._call("auth/authenticate", {"name": self.options.user, "password": self.options.password},
                                 auth=False)
                self._token = out.get("token", "") or "-"  # "-": etcd has authentication off
            return "" if self._token == "-" else self._token

    def _call(self, path: str, body: dict[str, Any], safe: bool = True, auth: bool = True) -> dict[str, Any]:
        """One POST, with failover. `safe`: repeating it after a failure in the middle does no
        harm (reads, unconditional puts, lease calls), so it may go on to the next endpoint."""
        n = len(self.endpoints)
        failures = 0
        reauthed = False
        payload = json.dumps(body)
        while True:
            headers = self._headers() if auth else {"Content-Type": "application/json"}
            kept = self._pooled()
            conn, ep = kept or self._connect(self.timeout)
            keep = False
            try:
                conn.request("POST", "/v3/" + path, body=payload, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                keep = not resp.will_close
            except (OSError, http.client.HTTPException) as e:
                if kept is not None and isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                                       BrokenPipeError)):
                    continue  # a kept connection etcd had closed: the request never got there
                problem = self._tls_problem(e, ep) or self._silent_refusal(e, ep)
                if problem:
                    raise Invalid(problem) from None
                self._skip(ep)
                failures += 1
                if safe and failures < n:
                    continue
                raise Unavailable(f"etcd at {ep} did not answer {path}: {_reason(e)}") from None
            finally:
                if keep:
                    self._release(conn, ep)
                else:
                    conn.close()
            st = self.stats
            st[path] += 1
            st["bytes_sent"] += len(payload)
            st["bytes_received"] += len(data)
            try:
                out = json.loads(data or b"{}")
            except ValueError:
                if b"HTTP request to an HTTPS server" in data:
                    raise Invalid(f"etcd at {ep} speaks TLS (use etcds:// for it)") from None
                if resp.status == 400 and b"CommonName" in data:
                    raise Invalid(f"etcd at {ep} refuses a client certificate with a CommonName on its JSON "
                                  f"gateway (etcd 3.4): use a certificate without CN for Muslin") from None
                raise Unavailable(f"etcd at {ep} sent a non-JSON answer to {path} (HTTP {resp.status})") from None
            if resp.status == 200 and "error" not in out:
                return out
            msg = str(out.get("message") or out.get("error") or f"HTTP {resp.status}")
            code = int(out.get("code") or 0) if str(out.get("code", "")).isdigit() else 0
            if code == UNAUTHENTICATED and auth and self.options.user and not reauthed:
                with self._auth_lock:  # the token expired or a member does not know it: a new one
                    self._token = ""
                reauthed = True
                continue
            if "lease not found" in msg:
                raise NotFound(f"etcd lease not found: {msg}")
            if resp.status >= 500 or code in (DEADLINE_EXCEEDED, UNAVAILABLE):
                self._skip(ep)
                failures += 1
                if safe and failures < n:
                    continue
                raise Unavailable(f"etcd at {ep} failed {path}: {msg}")
            raise Invalid(self._rejection(ep, path, msg, code))

    def _pooled(self) -> tuple[http.client.HTTPConnection, Endpoint] | None:
        """An idle kept-alive connection to the current endpoint, if one is still good."""
        with self._lock:
            while self._idle:
                conn, ep = self._idle.pop()
                if ep == self.endpoints[self._cur] and not _stale(conn):
                    return conn, ep
                conn.close()
        return None

    def _release(self, conn: http.client.HTTPConnection, ep: Endpoint) -> None:
        with self._lock:
            if len(self._idle) < POOL and not self._closed.is_set():
                self._idle.append((conn, ep))
                return
        conn.close()

    def _rejection(self, ep: Endpoint, path: str, msg: str, code: int) -> str:
        user = self.options.user
        if "authentication failed" in msg:
            return f"etcd at {ep} refused user {user!r}: {msg.removeprefix('etcdserver: ')}"
        if "user name is empty" in msg or (code == PERMISSION_DENIED and not user):
            return f"etcd at {ep} requires a user and password ({msg.removeprefix('etcdserver: ')})"
        if code == PERMISSION_DENIED:
            return f"etcd at {ep} denied {path} to user {user!r} ({msg.removeprefix('etcdserver: ')}: give it a role)"
        return f"etcd rejected {path}: {msg}"

    def _silent_refusal(self, e: BaseException, ep: Endpoint) -> str:
        """etcd (Go, TLS 1.3) closes the connection after the handshake, without an alert Python
        reports, when it wants a client certificate it did not get or does not trust. Tell that
        from a member going away by asking once more on a fresh connection."""
        if not isinstance(e, (ssl.SSLError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
            return ""
        if not ep.tls:
            return self._speaks_tls(ep)
        conn = self._new_conn(ep, self.timeout)
        try:
            conn.connect()
            conn.request("POST", "/v3/maintenance/status", body="{}", headers={"Content-Type": "application/json"})
            conn.getresponse().read()
            return ""
        except ssl.SSLError as again:
            return self._tls_problem(again, ep) or self._refused(ep, _ssl_reason(again))
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as again:
            return self._refused(ep, _reason(again))
        except (OSError, http.client.HTTPException):
            return ""
        finally:
            conn.close()

    def _speaks_tls(self, ep: Endpoint) -> str:
        """etcd serving https closes a plain http request without an answer: say so when a TLS
        handshake with it works."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # only asking whether it speaks TLS at all
        try:
            with socket.create_connection((ep.host, ep.port), timeout=self.timeout) as raw:
                with ctx.wrap_socket(raw, server_hostname=ep.host):
                    return f"etcd at {ep} speaks TLS (use etcds:// for it)"
        except (OSError, ValueError):
            return ""

    def _speaks_plain(self, e: BaseException, ep: Endpoint) -> str:
        """etcd serving plain http drops a TLS handshake (an EOF, or a reset when it closes with
        the hello unread): say so when plain http gets an answer."""
        dropped = isinstance(e, ConnectionResetError) or (
            isinstance(e, ssl.SSLError) and "EOF" in (e.reason or type(e).__name__).upper())
        if not ep.tls or not dropped:
            return ""
        conn = http.client.HTTPConnection(ep.host, ep.port, timeout=self.timeout)
        try:
            conn.request("GET", "/version")
            conn.getresponse().read()
            return f"etcd at {ep} does not speak TLS (use etcd:// for it)"
        except (OSError, http.client.HTTPException):
            return ""
        finally:
            conn.close()

    def _forget_token(self) -> None:
        with self._auth_lock:
            self._token = ""

    def health(self) -> list[dict[str, Any]]:
        """Each endpoint: {"endpoint", "ok", "version", "leader"} or {"endpoint", "ok": False, "error"}."""
        out = []
        for ep in self.endpoints:
            conn = self._new_conn(ep, HEALTH_TIMEOUT)
            try:
                conn.connect()
                conn.request("POST", "/v3/maintenance/status", body="{}", headers=self._headers())
                r = conn.getresponse()
                d = json.loads(r.read() or b"{}")
                if r.status != 200 or "error" in d:
                    raise Unavailable(str(d.get("message") or d.get("error") or f"HTTP {r.status}"))
                out.append({"endpoint": str(ep), "ok": True, "version": d.get("version", ""),
                            "leader": d.get("leader") == d.get("header", {}).get("member_id")})
            except (OSError, ValueError, http.client.HTTPException, Unavailable, Invalid) as e:
                why = self._tls_problem(e, ep) if isinstance(e, ssl.SSLError) else ""
                out.append({"endpoint": str(ep), "ok": False, "error": why or _reason(e)})
            finally:
                conn.close()
        return out

    # -- reads -------------------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        out = self._call("kv/range", {"key": self._k(key)})
        kvs = out.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    def list(self, prefix: str) -> list[KV]:
        out = self._call("kv/range", {**self._range(prefix), "sort_order": "ASCEND", "sort_target": "KEY"})
        return [self._kv(d) for d in out.get("kvs") or []]

    def snapshot(self, prefix: str) -> tuple[int, list[KV]]:
        out = self._call("kv/range", {**self._range(prefix), "sort_order": "ASCEND", "sort_target": "KEY"})
        return int(out["header"]["revision"]), [self._kv(d) for d in out.get("kvs") or []]

    def keys(self, prefix: str, limit: int = 0) -> list[str]:
        body = {**self._range(prefix), "sort_order": "ASCEND", "sort_target": "KEY", "keys_only": True}
        if limit:
            body["limit"] = limit
        out = self._call("kv/range", body)
        return [_unb64(d["key"]).decode()[len(self.prefix):] for d in out.get("kvs") or []]

    def revision(self) -> int:
        out = self._call("kv/range", {"key": _b64("\0"), "count_only": True})
        return int(out["header"]["revision"])

    # -- writes ------------------------------------------------------------------------
    def _k(self, key: str) -> str:
        return _b64(self.prefix + key)

    def _range(self, prefix: str) -> dict[str, str]:
        full = self.prefix + prefix
        return {"key": _b64(full or "\0"), "range_end": _prefix_end(full)}

    def _kv(self, d: dict[str, Any]) -> KV:
        kv = _kv(d)
        return KV(kv.key[len(self.prefix):], kv.value, kv.create_revision, kv.mod_revision, kv.lease)

    def _put_op(self, key: str, value: Any, lease: int = 0) -> dict[str, Any]:
        req: dict[str, Any] = {"key": self._k(key), "value": _b64(json.dumps(value, sort_keys=True))}
        if lease:
            req["lease"] = str(lease)
        return {"request_put": req}

    def _cmp(self, key: str, mod_revision: int) -> dict[str, Any]:
        return {"key": self._k(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}

    def _txn(self, compares: list[dict[str, Any]], success: list[dict[str, Any]], what: str) -> dict[str, Any]:
        out = self._call("kv/txn", {"compare": compares, "success": success}, safe=False)
        if not out.get("succeeded"):
            raise Conflict(f"{what}: changed concurrently (compare failed)")
        return out

    def put(self, key: str, value: Any, *, expect: int | None = None, lease: int = 0) -> int:
        if expect is None:
            out = self._call("kv/put", self._put_op(key, value, lease)["request_put"])
        else:
            out = self._txn([self._cmp(key, expect)], [self._put_op(key, value, lease)], f"put {key}")
        return int(out["header"]["revision"])

    def delete(self, key: str, *, expect: int | None = None) -> bool:
        req = {"request_delete_range": {"key": self._k(key)}}
        if expect is None:
            out = self._call("kv/deleterange", req["request_delete_range"])
            return int(out.get("deleted", 0)) > 0
        out = self._txn([self._cmp(key, expect)], [req], f"delete {key}")
        resp = (out.get("responses") or [{}])[0].get("response_delete_range", {})
        return int(resp.get("deleted", 0)) > 0

    def delete_prefix(self, prefix: str) -> int:
        out = self._call("kv/deleterange", self._range(prefix))
        return int(out.get("deleted", 0))

    def txn(self, compares: list[Compare], ops: list[Op]) -> int:
        success: list[dict[str, Any]] = []
        for op in ops:
            if isinstance(op, Put):
                success.append(self._put_op(op.key, op.value, op.lease))
            elif isinstance(op, Delete):
                success.append({"request_delete_range": self._range(op.key) if op.prefix else {"key": self._k(op.key)}})
            else:
                raise Invalid(f"txn: unknown operation {op!r}")
        out = self._txn([self._cmp(c.key, c.mod_revision) for c in compares], success, "txn")
        return int(out["header"]["revision"])

    # -- leases ------------------------------------------------------------------------
    def grant_lease(self, ttl: float) -> int:
        out = self._call("lease/grant", {"TTL": str(max(1, int(round(ttl))))})
        return int(out["ID"])

    def refresh_lease(self, lease: int) -> None:
        out = self._call("lease/keepalive", {"ID": str(lease)})
        res = out.get("result", out)
        if int(res.get("TTL", 0)) <= 0:
            raise NotFound(f"etcd lease {lease:x} has expired")

    def revoke_lease(self, lease: int) -> None:
        try:
            self._call("lease/revoke", {"ID": str(lease)})
        except NotFound:
            pass

    def lease_ttl(self, lease: int) -> tuple[int, int]:
        """(seconds left, granted TTL) of a lease; seconds left is -1 when it is gone."""
        out = self._call("lease/timetolive", {"ID": str(lease)})
        return int(out.get("TTL", -1)), int(out.get("grantedTTL", 0))

    def compact(self, revision: int) -> None:
        try:
            self._call("kv/compaction", {"revision": str(int(revision)), "physical": True}, safe=False)
        except Invalid as e:
            if "compacted" not in str(e):  # already compacted that far: nothing to do
                raise

    # -- watch -------------------------------------------------------------------------
    def watch(self, prefix: str, from_revision: int, timeout: float | None = None) -> Iterator[Event]:
        """Events under prefix from from_revision on. A dropped stream is reopened from the
        next revision (backoff 0.2 s .. 2 s); compaction raises Compacted."""
        return iterate(self.open_watch(prefix, from_revision), timeout)

    def open_watch(self, prefix: str, from_revision: int) -> "EtcdWatch":
        return EtcdWatch(self, prefix, from_revision)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for c, _ep in self._idle:
                c.close()
            self._idle.clear()
            for c in list(self._streams):
                if c.sock is not None:
                    try:
                        c.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


def _stale(conn: http.client.HTTPConnection) -> bool:
    """An idle connection with something to read has been closed by etcd (or is out of step)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _keepalive(sock: socket.socket) -> None:
    idle, interval, count = KEEPALIVE
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    except (OSError, AttributeError):
        pass


class EtcdWatch:
    """One long-lived watch (Store.open_watch): a helper thread reads the gateway's stream
    and queues each message's events; a stream that drops is reopened from the next
    revision on the next member (backoff 0.2 s .. 2 s). Progress notifications move the
    resume point along while nothing happens under the prefix, so a long-idle watch does
    not resume from a compacted revision."""

    def __init__(self, store: EtcdStore, prefix: str, from_revision: int, sink: Any = None) -> None:
        """`sink`: an object whose put((kind, item)) takes what the reader thread would queue
        (events as ("events", [Event...])), called on that thread; get() is then not used
        (the simulated cluster's watch-only hosts: one thread per watch)."""
        self.store, self.prefix = store, prefix
        self.next_revision = max(1, int(from_revision))  # what get() has handed over
        self._resume = self.next_revision  # where the reader reopens the stream
        self._q: Any = sink if sink is not None else queue.SimpleQueue()
        self._stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._up = False
        self._failed = False
        self._thread = threading.Thread(target=self._reader, name=f"etcd-watch {prefix}", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self._up

    def get(self, timeout: float | None = None) -> list[Event]:
        out: list[Event] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        closed = self.store._closed
        block = True
        while not closed.is_set() and not self._stop.is_set():
            try:
                if block:
                    wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                    if wait <= 0:
                        return out
                    kind, item = self._q.get(timeout=wait)
                else:
                    kind, item = self._q.get_nowait()
            except queue.Empty:
                if not block:
                    return out
                continue
            if kind == "events":
                out.extend(item)
                self.next_revision = item[-1].revision + 1
                block = False  # and whatever else is queued already
            elif kind == "progress":
                self.next_revision = max(self.next_revision, item)
            elif kind == "wake":
                return out
            elif kind == "compacted":
                raise Compacted(item)
            elif kind == "invalid":
                raise Invalid(item)
            else:
                raise Unavailable(item)
        return out

    def wake(self) -> None:
        self._q.put(("wake", None))

    def close(self) -> None:
        self._stop.set()
        self._q.put(("wake", None))
        c = self._conn
        if c is not None and c.sock is not None:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _reader(self) -> None:
        s, stop = self.store, self._stop
        backoff = 0.2
        while not stop.is_set() and not s._closed.is_set():
            try:
                conn, ep = s._connect(None)
            except Unavailable:
                stop.wait(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            except Invalid as e:
                self._q.put(("invalid", str(e)))
                return
            self._conn = conn
            _keepalive(conn.sock)
            with s._lock:
                s._streams.add(conn)
            try:
                if stop.is_set():
                    return
                body = {"create_request": {**s._range(self.prefix), "start_revision": str(self._resume),
                                           "progress_notify": True}}
                s.stats["watch_streams"] += 1
                conn.request("POST", "/v3/watch", body=json.dumps(body), headers=s._headers())
                resp = conn.getresponse()
                if resp.status != 200:
                    if b"auth token" in resp.read(4096):
                        s._forget_token()
                    raise http.client.HTTPException(f"HTTP {resp.status}")
                while not stop.is_set():
                    line = resp.readline()
                    if not line:
                        break
                    s.stats["watch_bytes"] += len(line)
                    doc = json.loads(line)
                    if "error" in doc:  # e.g. the token expired while the stream was down
                        if "auth token" in json.dumps(doc["error"]):
                            s._forget_token()
                        break
                    msg = doc.get("result", {})
                    if int(msg.get("compact_revision", 0) or 0) > 0:
                        self._q.put(("compacted", f"etcd watch on {self.prefix!r} cannot resume from revision "
                                                  f"{self._resume}: history compacted up to {msg['compact_revision']}"))
                        return
                    if msg.get("canceled"):
                        self._q.put(("error", f"etcd canceled the watch on {self.prefix!r}: "
                                              f"{msg.get('cancel_reason', '')}"))
                        return
                    self._up = True
                    backoff = 0.2
                    events = []
                    for ev in msg.get("events") or []:
                        kv = ev["kv"]
                        rev = int(kv.get("mod_revision", 0))
                        key = _unb64(kv["key"]).decode()[len(s.prefix):]
                        if ev.get("type") == "DELETE":
                            events.append(Event("delete", key, None, rev))
                        else:
                            events.append(Event("put", key, _value(_unb64(kv.get("value", ""))), rev))
                    if events:
                        s.stats["watch_events"] += len(events)
                        self._resume = events[-1].revision + 1
                        self._q.put(("events", events))
                    elif not msg.get("created"):  # a progress notification: all before it was sent
                        rev = int(msg.get("header", {}).get("revision", 0) or 0) + 1
                        if rev > self._resume:
                            self._resume = rev
                            self._q.put(("progress", rev))
            except Invalid as e:  # a wrong password or certificate: retrying will not help
                self._q.put(("invalid", str(e)))
                return
            except (OSError, ValueError, http.client.HTTPException, Unavailable):
                pass
            finally:
                self._up = False
                with s._lock:
                    s._streams.discard(conn)
                conn.close()
            if not stop.is_set():
                s._skip(ep)  # a member that drops the stream: the next one, if there are several
                stop.wait(backoff)
                backoff = min(2.0, backoff * 2)


def _reason(e: BaseException | None) -> str:
    if e is None:
        return "no endpoint"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(e) or type(e).__name__

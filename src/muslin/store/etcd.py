"""EtcdStore: the Store protocol on etcd 3.4 through its HTTP JSON gateway (/v3/).

The gateway is plain HTTP + JSON (keys and values base64), so the client is a thin
layer over http.client: every call is one POST. Watches are long-lived streamed POSTs
read by a helper thread; a dropped stream is reopened from the next revision with
backoff, so resuming loses nothing (a compacted revision raises Unavailable).
Values are stored as JSON text. An unreachable etcd raises Unavailable with one line.
"""

from __future__ import annotations

import base64
import http.client
import json
import queue
import socket
import threading
import time
from typing import Any, Iterator
from urllib.parse import urlsplit

from muslin.model.errors import Conflict, Invalid, NotFound, Unavailable
from muslin.store.base import KV, Compare, Delete, Event, Op, Put

CALL_TIMEOUT = 5.0


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


def _endpoint(e: str) -> tuple[str, int]:
    if "://" not in e:
        e = "http://" + e
    u = urlsplit(e)
    if u.scheme != "http" or not u.hostname:
        raise Invalid(f"etcd endpoint {e!r} is not of the form http://host:port (only plain http is supported)")
    return u.hostname, u.port or 2379


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


class EtcdStore:
    """Store on etcd 3.4. `endpoints`: ["host:port", "http://host:port", ...]."""

    def __init__(self, endpoints: list[str] | str, timeout: float = CALL_TIMEOUT, prefix: str = "") -> None:
        """`prefix` namespaces every key (several stores can share one etcd)."""
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        if not endpoints:
            raise Invalid("etcd store: no endpoint given")
        self.endpoints = [_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self.prefix = prefix
        self._cur = 0
        self._closed = threading.Event()
        self._streams: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()

    # -- transport ---------------------------------------------------------------------
    def _where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    def _connect(self, timeout: float | None) -> tuple[http.client.HTTPConnection, tuple[str, int]]:
        last: Exception | None = None
        n = len(self.endpoints)
        for i in range(n):
            ep = self.endpoints[(self._cur + i) % n]
            conn = http.client.HTTPConnection(ep[0], ep[1], timeout=self.timeout)
            try:
                conn.connect()
                conn.sock.settimeout(timeout)  # None for watch streams: they wait for events
            except OSError as e:
                last = e
                conn.close()
                continue
            self._cur = (self._cur + i) % n
            return conn, ep
        raise Unavailable(f"etcd at {self._where()} is unreachable: {_reason(last)}")

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        conn, ep = self._connect(self.timeout)
        try:
            conn.request("POST", "/v3/" + path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise Unavailable(f"etcd at {ep[0]}:{ep[1]} did not answer {path}: {_reason(e)}") from None
        finally:
            conn.close()
        try:
            out = json.loads(data or b"{}")
        except ValueError:
            raise Unavailable(f"etcd at {ep[0]}:{ep[1]} sent a non-JSON answer to {path} (HTTP {resp.status})") from None
        if resp.status != 200 or "error" in out:
            msg = out.get("message") or out.get("error") or f"HTTP {resp.status}"
            if "lease not found" in msg:
                raise NotFound(f"etcd lease not found: {msg}")
            if resp.status >= 500 or out.get("code") in (4, 14):  # DEADLINE_EXCEEDED, UNAVAILABLE
                raise Unavailable(f"etcd at {ep[0]}:{ep[1]} failed {path}: {msg}")
            raise Invalid(f"etcd rejected {path}: {msg}")
        return out

    # -- reads -------------------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        out = self._call("kv/range", {"key": self._k(key)})
        kvs = out.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    def list(self, prefix: str) -> list[KV]:
        out = self._call("kv/range", {**self._range(prefix), "sort_order": "ASCEND", "sort_target": "KEY"})
        return [self._kv(d) for d in out.get("kvs") or []]

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
        out = self._call("kv/txn", {"compare": compares, "success": success})
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

    # -- watch -------------------------------------------------------------------------
    def watch(self, prefix: str, from_revision: int, timeout: float | None = None) -> Iterator[Event]:
        """Events under prefix from from_revision on. A dropped stream is reopened from the
        next revision (backoff 0.2 s .. 2 s); compaction raises Unavailable."""
        q: queue.Queue = queue.Queue()
        stop = threading.Event()
        state = {"next": max(1, int(from_revision))}
        holder: dict[str, http.client.HTTPConnection | None] = {"conn": None}

        def reader() -> None:
            backoff = 0.2
            while not stop.is_set() and not self._closed.is_set():
                try:
                    conn, ep = self._connect(None)
                except Unavailable as e:
                    q.put(("down", str(e)))
                    stop.wait(backoff)
                    backoff = min(2.0, backoff * 2)
                    continue
                holder["conn"] = conn
                with self._lock:
                    self._streams.add(conn)
                try:
                    body = {"create_request": {**self._range(prefix), "start_revision": str(state["next"])}}
                    conn.request("POST", "/v3/watch", body=json.dumps(body))
                    resp = conn.getresponse()
                    if resp.status != 200:
                        raise http.client.HTTPException(f"HTTP {resp.status}")
                    while not stop.is_set():
                        line = resp.readline()
                        if not line:
                            break
                        msg = json.loads(line).get("result", {})
                        if int(msg.get("compact_revision", 0) or 0) > 0:
                            q.put(("error", f"etcd watch on {prefix!r} cannot resume from revision "
                                            f"{state['next']}: history compacted up to {msg['compact_revision']}"))
                            return
                        if msg.get("canceled"):
                            q.put(("error", f"etcd canceled the watch on {prefix!r}: {msg.get('cancel_reason', '')}"))
                            return
                        backoff = 0.2
                        for ev in msg.get("events") or []:
                            kv = ev["kv"]
                            rev = int(kv.get("mod_revision", 0))
                            key = _unb64(kv["key"]).decode()[len(self.prefix):]
                            if ev.get("type") == "DELETE":
                                e = Event("delete", key, None, rev)
                            else:
                                e = Event("put", key, _value(_unb64(kv.get("value", ""))), rev)
                            state["next"] = rev + 1
                            q.put(("event", e))
                except (OSError, ValueError, http.client.HTTPException):
                    pass
                finally:
                    with self._lock:
                        self._streams.discard(conn)
                    conn.close()
                if not stop.is_set():
                    stop.wait(backoff)
                    backoff = min(2.0, backoff * 2)

        t = threading.Thread(target=reader, name=f"etcd-watch {prefix}", daemon=True)
        t.start()
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._closed.is_set():
                wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    return
                try:
                    kind, item = q.get(timeout=wait)
                except queue.Empty:
                    continue
                if kind == "event":
                    yield item
                    if timeout is not None:
                        deadline = time.monotonic() + timeout
                elif kind == "error":
                    raise Unavailable(item)
        finally:
            stop.set()
            c = holder["conn"]
            if c is not None and c.sock is not None:
                try:
                    c.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for c in list(self._streams):
                if c.sock is not None:
                    try:
                        c.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


def _reason(e: BaseException | None) -> str:
    if e is None:
        return "no endpoint"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(e) or type(e).__name__

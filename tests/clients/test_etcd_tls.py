"""EtcdStore against real etcd 3.4 served over TLS with --client-cert-auth and user/password
authentication (certificates made here with openssl): a wrong CA, a missing or foreign
client certificate, a wrong password and plain http each fail with one line naming the
cause; a token that expires is fetched again; with several endpoints, a dead one is
skipped and a member killed in the middle of the work is left for the next, watches too."""

from __future__ import annotations

import secrets
import threading
import time

import pytest

from etcdutil import Certs, EtcdCluster, EtcdServer, free_port
from muslin.model.errors import Invalid
from muslin.store import open_store
from muslin.store.base import EtcdOptions

pytestmark = pytest.mark.client

USER = "muslin"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    c = Certs(tmp_path_factory.mktemp("certs"))
    c.other_ca()
    return c


@pytest.fixture(scope="module")
def tls_etcd(certs):
    srv = EtcdServer(certs=certs, auth=(USER, "pw-" + secrets.token_hex(4)), extra=("--auth-token-ttl", "2")).start()
    try:
        yield srv
    finally:
        srv.destroy()


def good(certs: Certs, password: str) -> EtcdOptions:
    return EtcdOptions(ca=certs.ca, cert=certs.client, key=certs.client_key, user=USER, password=password)


def test_right_credentials_work_and_an_expired_token_is_fetched_again(tls_etcd, certs):
    s = open_store(f"etcds://{tls_etcd.endpoint}", good(certs, tls_etcd.auth[1]))
    p = f"t-{secrets.token_hex(3)}/"
    s.put(p + "a", {"x": 1})
    start = s.revision() + 1
    got: list[str] = []

    def consume():
        for ev in s.watch(p + "w/", start, timeout=15):
            got.append(ev.key)
            if len(got) == 2:
                return

    t = threading.Thread(target=consume)
    t.start()
    s.put(p + "w/1", 1)
    time.sleep(3.5)  # the simple token's TTL is 2 s here: the next call authenticates again
    assert s.get(p + "a").value == {"x": 1}
    s.put(p + "w/2", 2)
    t.join(20)
    assert got == [p + "w/1", p + "w/2"]
    lease = s.grant_lease(30)
    left, granted = s.lease_ttl(lease)
    assert granted == 30 and 0 < left <= 30
    assert [h["ok"] for h in s.health()] == [True]
    s.close()


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_each_misconfiguration_fails_with_one_line_naming_its_cause(tls_etcd, certs):
    url, pw = f"etcds://{tls_etcd.endpoint}", tls_etcd.auth[1]
    ok = good(certs, pw)
    other_ca = str(certs.dir / "other-ca.pem")
    cases = {
        "wrong CA": (url, EtcdOptions(ca=other_ca, cert=ok.cert, key=ok.key, user=USER, password=pw),
                     f"its TLS certificate is not trusted by the CA in {other_ca}"),
        "no client certificate": (url, EtcdOptions(ca=ok.ca, user=USER, password=pw),
                                  "requires a client certificate, and none was given"),
        "foreign client certificate": (url, EtcdOptions(ca=ok.ca, cert=str(certs.dir / "other-client.pem"),
                                                        key=str(certs.dir / "other-client.key"), user=USER,
                                                        password=pw),
                                       "refused the client certificate"),
        "wrong password": (url, EtcdOptions(ca=ok.ca, cert=ok.cert, key=ok.key, user=USER, password="nope"),
                           f"refused user '{USER}': authentication failed, invalid user ID or password"),
        "no user": (url, EtcdOptions(ca=ok.ca, cert=ok.cert, key=ok.key), "requires a user and password"),
        "plain http": (f"etcd://{tls_etcd.endpoint}", None, "speaks TLS (use etcds:// for it)"),
    }
    for what, (u, opts, want) in cases.items():
        with pytest.raises(Invalid) as e:
            open_store(u, opts).get("x")
        assert want in one_line(e), what
    with pytest.raises(Invalid) as e:
        open_store(url, EtcdOptions(ca=str(certs.dir / "missing.pem")))
    assert one_line(e) == f"etcd CA file {certs.dir / 'missing.pem'}: no such file"
    with pytest.raises(Invalid) as e:
        open_store(url, EtcdOptions(ca=ok.ca, cert=ok.cert, key=str(certs.dir / "server.key")))
    assert "do not load: key values mismatch" in one_line(e)


def test_tls_to_a_plain_etcd_says_it_does_not_speak_tls(certs):
    srv = EtcdServer().start()
    try:
        with pytest.raises(Invalid) as e:
            open_store(f"etcds://{srv.endpoint}", EtcdOptions(ca=certs.ca)).get("x")
        assert one_line(e) == f"etcd at {srv.endpoint} does not speak TLS (use etcd:// for it)"
    finally:
        srv.destroy()


def test_several_endpoints_fail_over_for_calls_and_watches(certs):
    cluster = EtcdCluster(3, certs, (USER, "pw-" + secrets.token_hex(4))).start()
    try:
        dead = f"127.0.0.1:{free_port()}"  # nothing listens: skipped at connect
        url = "etcds://" + ",".join([dead, *cluster.endpoints])
        s = open_store(url, good(certs, cluster.auth[1]))
        s.put("f/a", 1)
        assert str(s.endpoints[s._cur]) == cluster.endpoints[0]
        lease = s.grant_lease(20)
        s.put("f/leased", 1, lease=lease)
        start = s.revision() + 1
        got: list[str] = []

        def consume():
            for ev in s.watch("w/", start, timeout=30):
                got.append(ev.key)
                if len(got) == 3:
                    return

        t = threading.Thread(target=consume)
        t.start()
        s.put("w/1", 1)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.1)
        cluster.members[0].stop()  # the member every call and the watch were using
        s.put("w/2", 2)  # goes to the next member
        assert s.get("f/a").value == 1
        s.refresh_lease(lease)
        assert s.get("f/leased") is not None
        s.txn([], [__import__("muslin.store.base", fromlist=["Put"]).Put("w/3", 3)])
        t.join(30)
        assert got == ["w/1", "w/2", "w/3"]
        assert str(s.endpoints[s._cur]) != cluster.endpoints[0]
        health = {h["endpoint"]: h["ok"] for h in s.health()}
        assert health == {dead: False, cluster.endpoints[0]: False, cluster.endpoints[1]: True,
                          cluster.endpoints[2]: True}
        s.close()
    finally:
        cluster.destroy()

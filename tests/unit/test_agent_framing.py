"""The agent socket's two framings (cni/server.py, docs/architecture.md): requests decode
to exactly what was sent, short or malformed input is answered or dropped, never a hang
or a traceback, and both framings share one connection."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muslin.cni import server
from muslin.cni.server import (
    MAGIC, FramingError, decode_answer, encode_answer, encode_request, parse_env, read_request, serve_one,
)

env_key = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x10FFFF, exclude_characters="=",
                                exclude_categories=("Cs",)), min_size=1, max_size=20)
env_value = st.text(st.characters(min_codepoint=1, exclude_categories=("Cs",)), max_size=60)


def reader(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data))


@settings(max_examples=200, deadline=None)
@given(plugin=st.sampled_from(["cni", "ipam"]), env=st.dictionaries(env_key, env_value, max_size=8),
       stdin=st.binary(max_size=4096))
def test_request_round_trip(plugin, env, stdin):
    assert read_request(reader(encode_request(plugin, env, stdin))) == (plugin, env, stdin)


def test_large_stdin_round_trip():
    stdin = ("prevResult ünïcødé 🚀 " * 300_000).encode() + bytes(range(256))  # ~8 MB, NULs and all
    data = encode_request("cni", {"CNI_COMMAND": "CHECK"}, stdin)
    assert read_request(reader(data)) == ("cni", {"CNI_COMMAND": "CHECK"}, stdin)


def test_env_bytes_that_are_not_utf8_survive():
    block = b"CNI_ARGS=IP=\xff\xfe\0MUSLIN_X=1\0"
    env = parse_env(block)
    assert env["CNI_ARGS"].encode("utf-8", "surrogateescape") == b"IP=\xff\xfe"
    assert env["MUSLIN_X"] == "1"


def test_env_first_duplicate_wins_like_os_environ():
    assert parse_env(b"CNI_A=1\0CNI_A=2\0CNI_B=x=y\0") == {"CNI_A": "1", "CNI_B": "x=y"}
    assert parse_env(b"") == {}


@pytest.mark.parametrize("block", [b"CNI_A=1", b"NOEQUALS\0", b"=x\0"])
def test_env_malformed(block):
    with pytest.raises(FramingError):
        parse_env(block)


def test_every_truncation_is_eof():
    data = encode_request("ipam", {"CNI_COMMAND": "ADD"}, b'{"x": 1}')
    for cut in range(1, len(data)):
        with pytest.raises(EOFError):
            read_request(reader(data[:cut]))


@pytest.mark.parametrize("data, needle", [
    (b"MSL3" + b"\0" * 12, "unknown framing"),
    (MAGIC + b"\0\0\0\x04nope" + b"\0" * 8, "unknown plugin"),
    (MAGIC + b"\xff\xff\xff\xff", "over the limit"),
    (MAGIC + b"\0\0\0\x03cni" + (server.MAX_ENV + 1).to_bytes(4, "big"), "over the limit"),
    (MAGIC + b"\0\0\0\x03cni\0\0\0\0" + (server.MAX_STDIN + 1).to_bytes(4, "big"), "over the limit"),
])
def test_malformed_request(data, needle):
    with pytest.raises(FramingError, match=needle):
        read_request(reader(data))


@pytest.mark.parametrize("stdout, rc", [("", 0), ('{"cniVersion": "1.0.0"}', 0), ("x" * 100_000, 1), ("é", -1),
                                        ("\udcff", 255)])
def test_answer_round_trip(stdout, rc):
    assert decode_answer(encode_answer(stdout, rc)) == (stdout, rc)


def test_answer_malformed():
    for data in (b"", b"MSL2\0\0", b'{"stdout": "", "rc": 0}\n', encode_answer("abc", 0)[:-1]):
        with pytest.raises(FramingError):
            decode_answer(data)


# ------------------------------------------------------------------ serve_one


@pytest.fixture
def echo(monkeypatch):
    """The handler replaced by one that answers what it got (and rc 3 for ipam)."""
    seen = []

    def fake(plugin):
        def h(env, stdin):
            seen.append((plugin, env, stdin))
            return json.dumps({"plugin": plugin, "env": env, "n": len(stdin)}), 3 if plugin == "ipam" else 0
        return h

    monkeypatch.setattr(server, "handle", fake("cni"))
    monkeypatch.setattr(server, "handle_ipam", fake("ipam"))
    return seen


def serve_all(data: bytes) -> bytes:
    r, w = reader(data), io.BytesIO()
    n = 0
    while serve_one(r, w):
        n += 1
        assert n < 100
    return w.getvalue()


def test_both_framings_on_one_connection(echo):
    line = json.dumps({"plugin": "cni", "env": {"CNI_COMMAND": "ADD"}, "stdin": "{}"}).encode() + b"\n"
    framed = encode_request("ipam", {"CNI_COMMAND": "DEL"}, b"\0\xff{}")
    out = serve_all(line + framed + line)
    first, rest = out.split(b"\n", 1)
    assert json.loads(json.loads(first)["stdout"])["plugin"] == "cni"
    n = len(encode_answer(json.dumps({"plugin": "ipam", "env": {"CNI_COMMAND": "DEL"}, "n": 4}), 3))
    stdout, rc = decode_answer(rest[:n])
    assert rc == 3 and json.loads(stdout) == {"plugin": "ipam", "env": {"CNI_COMMAND": "DEL"}, "n": 4}
    assert json.loads(rest[n:])["rc"] == 0
    assert echo[1] == ("ipam", {"CNI_COMMAND": "DEL"}, b"\0\xff{}")  # stdin bytes exactly


def test_framing2_malformed_is_answered_once_then_closed(echo):
    out = serve_all(b"MSL9" + b"\0" * 20 + encode_request("cni", {}, b""))
    stdout, rc = decode_answer(out)
    assert rc == 1 and json.loads(stdout)["code"] == 6 and "unknown framing" in json.loads(stdout)["msg"]
    assert echo == []


def test_framing2_cut_short_is_dropped(echo):
    assert serve_all(encode_request("cni", {"CNI_COMMAND": "ADD"}, b"x" * 100)[:-10]) == b""
    assert echo == []


def test_framing1_malformed_line_is_answered(echo):
    ans = json.loads(serve_all(b"garbage\n"))
    assert ans["rc"] == 1 and json.loads(ans["stdout"])["code"] == 6


def test_handler_exception_is_an_error_answer_not_a_traceback(monkeypatch):
    def boom(env, stdin):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(server, "handle", boom)
    stdout, rc = decode_answer(serve_all(encode_request("cni", {}, b"")))
    assert rc == 1 and json.loads(stdout)["code"] == 999 and "disk on fire" in json.loads(stdout)["msg"]
    ans = json.loads(serve_all(json.dumps({"plugin": "cni", "env": {}, "stdin": ""}).encode() + b"\n"))
    assert ans["rc"] == 1 and "disk on fire" in json.loads(ans["stdout"])["msg"]

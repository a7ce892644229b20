"""The native muslin-cni/muslin-ipam (native/muslin-fwd.c), no root needed: VERSION and
the about line exactly as the Python entry says them, the request muslind receives
(framing 2), stdout and exit status passed through intact, agentSocket from the config,
code 11 for an agent that answers garbage or goes away, and the exec of the Python entry
when no agent answers, with stdin handed over byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muslin.cni import entry
from muslin.cni.server import encode_answer, read_request
from nativeutil import FakeAgent, build, needs_native
from nsutil import VENV_BIN

CNI, IPAM = str(VENV_BIN / "muslin-cni"), str(VENV_BIN / "muslin-ipam")


def run(exe: str, env: dict[str, str], stdin: bytes = b"", argv0: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([argv0 or exe], executable=exe, env={"PATH": "/usr/bin:/bin", **env}, input=stdin,
                          capture_output=True, timeout=30)


def version_of(exe: str, stdin: bytes) -> str:
    p = run(exe, {"CNI_COMMAND": "VERSION"}, stdin)
    assert p.returncode == 0 and p.stderr == b"", p
    return p.stdout.decode()


# ------------------------------------------------------------------ VERSION and the about line

FIXED = [b"", b"{}", b" \t\n{}\r\n", b'{"cniVersion": "0.3.1"}', b'{"cniVersion":"1.0.0","cniVersion":"0.4.0"}',
         b'{"cni\\u0056ersion": "0.2.0"}', b'{"cniVersion": "0.3.\\u0031"}', b'{"cniVersion": "9.9.9"}',
         b'{"cniVersion": 1}', b'{"cniVersion": null}', b"[1]", b'"x"', b"not json", b"\xff\xfe", b"\xef\xbb\xbf{}",
         b'{"cniVersion": "0.4.0"', b'{"cniVersion": "0.4.0",}', b'{"cniVersion": "0.4.0"} x', b'{"a": NaN, '
         b'"b": -Infinity, "c": Infinity, "cniVersion": "0.1.0"}', b'{"a": 01, "cniVersion": "0.1.0"}',
         b'{"a": 1., "cniVersion": "0.1.0"}', b'{"a": 1e5, "b": -0.5E-3, "cniVersion": "0.1.0"}',
         b'{"a": "\x01", "cniVersion": "0.1.0"}', b'{"a": "\\x", "cniVersion": "0.1.0"}',
         b'{"a": "\xed\xa0\x80", "cniVersion": "0.1.0"}', b'{"a": "\\ud800", "cniVersion": "0.1.0"}',
         b'{"a": "\xc3\xa9\xf0\x9f\x9a\x80", "cniVersion": "0.1.0"}', b'{"a": "\xc0\xaf", "cniVersion": "0.1.0"}',
         b'{"cniVersion": "0.4.0", "x": ' + b"[" * 500 + b"]" * 500 + b"}",  # deeper than the C scanner goes
         b'{"cniVersion": "0.4.0", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # deeper than Python's recursion
         b'{"cniVersion": "0.4.0", "x": ' + b"7" * 5000 + b"}",  # over Python's int digit limit
         b'{"cniVersion": "0.4.0", "x": ' + b"7" * 4300 + b"}",
         b'{"cniVersion": "0.4.0", "x": 7' + b"0" * 5000 + b'.5}', b'{"cniVersion": "0.3.0"}\0']


@needs_native
@pytest.mark.parametrize("exe", [CNI, IPAM])
@pytest.mark.parametrize("stdin", FIXED, ids=range(len(FIXED)))
def test_version_same_as_python_entry(exe, stdin):
    assert version_of(exe, stdin) == entry._version(stdin)[0] + "\n"


def _mutate(args: tuple[str, int, str]) -> bytes:
    doc, at, op = args
    at = at % (len(doc) + 1)
    return {"keep": doc, "cut": doc[:at], "drop": doc[:at] + doc[at + 1:], "comma": doc[:at] + "," + doc[at:],
            "esc": doc.replace('"cniVersion"', '"cni\\u0056ersion"'), "quote": doc[:at] + '"' + doc[at:]}[op].encode()


_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4) | st.sampled_from(entry.VERSIONS)
_json = st.recursive(_leaf, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(
    st.sampled_from(["cniVersion", "name", "ipam", "é"]), ch, max_size=3), max_leaves=8)
_docs = st.tuples(st.builds(json.dumps, _json) | st.builds(lambda v: json.dumps({"cniVersion": v}), _leaf),
                  st.integers(0, 200), st.sampled_from(["keep", "keep", "cut", "drop", "comma", "esc", "quote"]))


@needs_native
@settings(max_examples=250, deadline=None)
@given(_docs.map(_mutate) | st.binary(max_size=40))
def test_version_same_as_python_entry_generated(stdin):
    assert version_of(CNI, stdin) == entry._version(stdin)[0] + "\n"


@needs_native
@pytest.mark.parametrize("name", ["muslin-cni", "muslin-ipam"])
def test_about_line_same_as_python_entry(name):
    exe = str(VENV_BIN / name)
    native, python = run(exe, {}), run(exe + "-py", {})
    assert native.returncode == python.returncode == 0 and native.stdout == python.stdout == b""
    assert native.stderr == python.stderr and b"CNI protocol versions supported" in native.stderr


# ------------------------------------------------------------------ through a (fake) agent


def echo_agent(seen: list, rc: int = 0):
    """Answers each framing-2 request with its own stdin as stdout."""
    def behave(conn: socket.socket) -> None:
        plugin, env, stdin = read_request(conn.makefile("rb"))
        seen.append((plugin, env, stdin))
        conn.sendall(encode_answer(stdin.decode("utf-8", "surrogateescape"), rc))
    return behave


@needs_native
@pytest.mark.parametrize("exe, plugin", [(CNI, "cni"), (IPAM, "ipam")])
@pytest.mark.parametrize("rc", [0, 1, 7, 255])
def test_request_and_answer_pass_intact(tmp_path, exe, plugin, rc):
    seen: list = []
    stdin = ('{"cniVersion": "1.0.0", "prevResult": "' + "ünï 🚀 \\\" " * 200_000 + '"}').encode() \
        + bytes(range(1, 256))  # ~3 MB, every byte but NUL
    with FakeAgent(tmp_path / "a.sock", echo_agent(seen, rc)) as a:
        env = {"CNI_COMMAND": "CHECK", "CNI_ARGS": "IP=10.0.0.9", "MUSLIN_AGENT_SOCKET": a.path,
               "MUSLIN_STATE_DIR": "/x", "OTHER": "not sent", "CNI_NETNS": "/run/netns/\xe9"}
        p = run(exe, env, stdin)
    assert p.returncode == rc
    assert p.stdout == stdin + b"\n" and p.stderr == b""  # a newline added, as entry.py does
    assert seen == [(plugin, {k: v for k, v in env.items() if k != "OTHER"}, stdin)]


@needs_native
def test_answer_ending_in_newline_and_empty_answer(tmp_path):
    for stdout, want in (("{}\n", b"{}\n"), ("", b"")):
        with FakeAgent(tmp_path / "a.sock", lambda c, s=stdout: (read_request(c.makefile("rb")),
                                                                 c.sendall(encode_answer(s, 0)))) as a:
            p = run(CNI, {"CNI_COMMAND": "DEL", "MUSLIN_AGENT_SOCKET": a.path}, b"{}")
        assert p.returncode == 0 and p.stdout == want


@needs_native
@pytest.mark.parametrize("where", ["top", "ipam", "both", "top-not-a-string"])
def test_agent_socket_from_the_config(tmp_path, where):
    seen: list = []
    with FakeAgent(tmp_path / "a.sock", echo_agent(seen)) as a:
        conf = {"cniVersion": "1.0.0", "name": "n"}
        if where == "top":
            conf["agentSocket"] = a.path
        elif where == "ipam":
            conf["ipam"] = {"type": "muslin-ipam", "agentSocket": a.path}
        elif where == "both":
            conf.update(agentSocket=a.path, ipam={"agentSocket": str(tmp_path / "other.sock")})
        else:
            conf.update(agentSocket=7, ipam={"agentSocket": a.path})
        stdin = json.dumps(conf).encode()
        p = run(CNI, {"CNI_COMMAND": "ADD"}, stdin)
    assert p.returncode == 0 and p.stdout == stdin + b"\n" and len(seen) == 1


@needs_native
def test_env_socket_wins_over_the_config(tmp_path):
    seen: list = []
    with FakeAgent(tmp_path / "a.sock", echo_agent(seen)) as a:
        stdin = json.dumps({"agentSocket": str(tmp_path / "none.sock")}).encode()
        p = run(CNI, {"CNI_COMMAND": "ADD", "MUSLIN_AGENT_SOCKET": a.path}, stdin)
    assert p.returncode == 0 and len(seen) == 1


def _close_at_once(conn):
    pass


def _garbage(conn):
    conn.recv(65536)
    conn.sendall(b"HTTP/1.0 500 oops\r\n\r\n")


def _json_line(conn):
    conn.recv(65536)
    conn.sendall(b'{"stdout": "", "rc": 0}\n')


def _short_header(conn):
    read_request(conn.makefile("rb"))
    conn.sendall(b"MSL2\0\0")


def _half_answer(conn):
    read_request(conn.makefile("rb"))
    conn.sendall(encode_answer("x" * 100, 0)[:40])


def _huge_length(conn):
    read_request(conn.makefile("rb"))
    conn.sendall(b"MSL2\0\0\0\0\xff\xff\xff\xff")


@needs_native
@pytest.mark.parametrize("behave", [_close_at_once, _garbage, _json_line, _short_header, _half_answer, _huge_length])
@pytest.mark.parametrize("size", [10, 3_000_000])
def test_bad_agent_is_code_11(tmp_path, behave, size):
    with FakeAgent(tmp_path / "a.sock", behave) as a:
        p = run(CNI, {"CNI_COMMAND": "ADD", "MUSLIN_AGENT_SOCKET": a.path}, b"{" + b" " * size + b"}")
    assert p.returncode == 1, p
    out = json.loads(p.stdout)
    assert out["code"] == 11 and a.path in out["msg"] and "did not answer" in out["msg"], out
    assert p.stdout.count(b"\n") == 1 and p.stderr == b""


# ------------------------------------------------------------------ no agent: the Python entry, in-process


def refused_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))  # bound, never listening: connect() is refused
    return s


@needs_native
@pytest.mark.parametrize("why", ["missing", "refused", "not-a-socket", "empty-env"])
@pytest.mark.parametrize("via", ["env", "config"])
def test_no_agent_runs_in_process_like_the_python_entry(tmp_path, why, via):
    path = tmp_path / "agent.sock"
    keep = refused_socket(path) if why == "refused" else None
    if why == "not-a-socket":
        path.write_text("")
    conf = {"cniVersion": "1.1.0", "name": "x", "type": "muslin-cni", "dataDir": str(tmp_path / "st"),
            "ipam": {"type": "muslin-ipam", "subnet": "10.9.0.0/24"}}
    env = {"CNI_COMMAND": "STATUS"}
    sock = "" if why == "empty-env" else str(path)
    if via == "env" or why == "empty-env":
        env["MUSLIN_AGENT_SOCKET"] = sock
    else:
        conf["agentSocket"] = sock
    try:
        for stdin in (json.dumps(conf).encode(), json.dumps({**conf, "cniVersion": "0.3.1"}).encode()[:-1]):
            native, python = run(CNI, env, stdin), run(CNI + "-py", env, stdin)
            assert (native.returncode, native.stdout) == (python.returncode, python.stdout), (native, python)
            assert b"Traceback" not in native.stderr
        assert (tmp_path / "st" / "muslin.db").exists()  # the work was done, in-process
        rc = run(IPAM, env, json.dumps(conf).encode())
        assert rc.returncode == 0 and rc.stdout == b""
    finally:
        if keep:
            keep.close()


# ------------------------------------------------------------------ the exec, seen from a stand-in Python entry

STAND_IN = r"""#!{python}
import hashlib, json, os, sys
data = sys.stdin.buffer.read()
json.dump({{"name": os.path.basename(sys.argv[0]), "sha": hashlib.sha256(data).hexdigest(), "len": len(data),
           "fd0": os.readlink("/proc/self/fd/0"), "cmd": os.environ.get("CNI_COMMAND"),
           "fds": sorted(os.listdir("/proc/self/fd"))}}, sys.stdout)
"""


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """A fresh build of the forwarder whose 'Python entry' reports what it was given."""
    d = tmp_path_factory.mktemp("fwd")
    for name in ("muslin-cni-py", "muslin-ipam-py"):
        (d / name).write_text(STAND_IN.format(python=sys.executable))
        (d / name).chmod(0o755)
    build(d / "muslin-cni", d)
    os.link(d / "muslin-cni", d / "muslin-ipam")
    return d


@pytest.mark.parametrize("how", ["env", "config", "version-too-deep"])
@pytest.mark.parametrize("size", [0, 100, 9_000_000])
@pytest.mark.parametrize("name", ["muslin-cni", "muslin-ipam"])
def test_stdin_reaches_the_python_entry_intact(stand_in, tmp_path, how, size, name):
    none = str(tmp_path / "none.sock")
    env = {"CNI_COMMAND": "VERSION" if how == "version-too-deep" else "ADD"}
    if how == "env":
        env["MUSLIN_AGENT_SOCKET"] = none
        stdin = os.urandom(size)  # not even read by the forwarder
    else:
        pad = "é🚀\\\"" * (size // 8)
        stdin = (json.dumps({"agentSocket": none, "pad": pad}) if how == "config" else
                 '{"pad": "' + pad + '", "x": ' + "[" * 300 + "]" * 300 + "}").encode()
    p = run(str(stand_in / name), env, stdin)
    assert p.returncode == 0, p
    got = json.loads(p.stdout)
    assert got["name"] == name + "-py" and got["cmd"] == env["CNI_COMMAND"]
    assert (got["len"], got["sha"]) == (len(stdin), hashlib.sha256(stdin).hexdigest())
    assert got["fd0"].startswith("pipe:") if how == "env" else got["fd0"].startswith("/memfd:")
    assert got["fds"] == ["0", "1", "2", "3"]  # nothing leaked (3 is listdir's own)


def test_missing_python_entry_is_one_line(stand_in, tmp_path):
    lone = tmp_path / "muslin-cni"
    build(lone, tmp_path / "nowhere")
    p = run(str(lone), {"CNI_COMMAND": "DEL", "MUSLIN_AGENT_SOCKET": str(tmp_path / "none.sock")}, b"{}")
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["code"] == 999 and "cannot start" in out["msg"] and p.stderr == b""


@needs_native
def test_request_over_the_agents_limit_gets_its_answer(tmp_path, monkeypatch):
    """muslind's own framing-2 server (cni/server.py) stops reading a request over its
    limit and answers: the forwarder prints that answer, not a broken pipe."""
    from muslin.cni import server

    monkeypatch.setattr(server, "MAX_STDIN", 1000)

    def behave(conn):
        server.serve_one(conn.makefile("rb"), conn.makefile("wb", buffering=0))

    with FakeAgent(tmp_path / "a.sock", behave) as a:
        p = run(CNI, {"CNI_COMMAND": "ADD", "MUSLIN_AGENT_SOCKET": a.path}, b"{" + b" " * 20_000_000 + b"}")
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["code"] == 6 and "over the limit" in out["msg"], out

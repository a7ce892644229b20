"""muslind's command line and its life under systemd, without the kernel.

A test plays systemd: a NOTIFY_SOCKET datagram socket and the CNI socket passed as fd 3
(LISTEN_FDS/LISTEN_PID, socket activation); READY=1 arrives only once both sockets answer
a real request, a request sent before muslind even started is answered, STOPPING=1 comes
on SIGTERM and systemd's socket stays. Settings come from flags, MUSLIN_* variables and the
TOML config file in that order; bad ones are one `error:` line, exit 2. --version works."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "clients"))
from docker_util import unix_post  # noqa: E402

MUSLIND = str(Path(sys.executable).parent / "muslind")
VERSION_REQ = json.dumps({"plugin": "cni", "env": {"CNI_COMMAND": "VERSION"},
                          "stdin": json.dumps({"cniVersion": "1.0.0"})}).encode() + b"\n"
# what systemd does between fork and exec: the socket on fd 3, LISTEN_PID = the new process
WRAP = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.execv(sys.argv[2], sys.argv[2:])")


def clean_env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MUSLIN_", "LISTEN_", "NOTIFY_", "JOURNAL_"))}
    return {**env, **kw}


def ask_version(path: str) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(VERSION_REQ)
        return json.loads(s.makefile("rb").readline())


def read_line(s: socket.socket) -> dict:
    return json.loads(s.makefile("rb").readline())


def datagrams(sock: socket.socket, until: str, timeout: float = 30) -> list[str]:
    out: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            out += sock.recv(4096).decode().splitlines()
        except socket.timeout:
            break
        if until in out:
            return out
    raise AssertionError(f"no {until} from muslind; got {out}")


def test_under_a_type_notify_supervisor_with_socket_activation(tmp_path):
    asock, dsock = str(tmp_path / "cni.sock"), str(tmp_path / "plugins" / "muslin.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(asock)
    listener.listen(16)
    early = socket.socket(socket.AF_UNIX)  # a plugin that calls before muslind runs: it waits
    early.connect(asock)
    early.sendall(VERSION_REQ)
    env = clean_env(NOTIFY_SOCKET=str(tmp_path / "notify"), LISTEN_FDS="1", LISTEN_FDNAMES="cni")
    p = subprocess.Popen([sys.executable, "-c", WRAP, str(listener.fileno()), MUSLIND, "--config", "",
                          "--docker-socket", dsock, "--agent-socket", asock, "--state-dir", str(tmp_path / "state"),
                          "--reconcile-interval", "0", "--log-format", "json"],
                         pass_fds=(listener.fileno(),), env=env, stderr=subprocess.PIPE, text=True)
    listener.close()  # muslind holds it now, as systemd would
    try:
        msgs = datagrams(notify, "READY=1")
        # at READY both sockets answer at once, without a retry
        assert "supportedVersions" in json.loads(ask_version(asock)["stdout"])
        assert unix_post(dsock, "/Plugin.Activate")[1] == {"Implements": ["NetworkDriver", "IpamDriver"]}
        assert any(m.startswith("STATUS=serving: ") for m in msgs) and f"MAINPID={p.pid}" in msgs
        early.settimeout(10)
        assert "supportedVersions" in json.loads(read_line(early)["stdout"])
        p.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in datagrams(notify, "STOPPING=1")
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        early.close()
        notify.close()
    err = p.stderr.read()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is JSON
    assert any("passed by systemd" in r["msg"] for r in records), err
    assert {r["level"] for r in records} <= {"debug", "info", "warning"}, err
    assert os.path.exists(asock)  # systemd's socket stays; muslind's own one goes
    assert not os.path.exists(dsock)


def test_no_ready_when_a_socket_cannot_be_served(tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run([MUSLIND, "--config", "", "--docker-socket", str(blocker / "muslin.sock"),
                        "--agent-socket", str(tmp_path / "a.sock"), "--state-dir", str(tmp_path / "s"),
                        "--reconcile-interval", "0"],
                       env=clean_env(NOTIFY_SOCKET=str(tmp_path / "notify")), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(blocker) in last, r.stderr
    notify.settimeout(0.2)
    got = []
    try:
        while True:
            got += notify.recv(4096).decode().splitlines()
    except socket.timeout:
        pass
    assert "READY=1" not in got and "STOPPING=1" in got
    assert not (tmp_path / "a.sock").exists()


def wait_for(path: Path, p: subprocess.Popen, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.05)


def test_settings_from_flags_environment_and_config_file(tmp_path):
    conf = tmp_path / "muslind.toml"
    conf.write_text(f'docker-socket = "{tmp_path / "conf-d.sock"}"\nagent-socket = "{tmp_path / "conf-a.sock"}"\n'
                    f'state-dir = "{tmp_path / "state"}"\nreconcile-interval = 0\nlog-level = "warning"\n')
    # the file's docker socket, the environment's agent socket over the file's, a flag over both
    env = clean_env(MUSLIN_AGENT_SOCKET=str(tmp_path / "env-a.sock"))
    p = subprocess.Popen([MUSLIND, "--config", str(conf), "--log-level", "info"], env=env,
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_for(tmp_path / "env-a.sock", p)
        wait_for(tmp_path / "conf-d.sock", p)
        assert not (tmp_path / "conf-a.sock").exists()
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "muslind ready" in p.stderr.read()  # --log-level info from the flag, not the file's warning


@pytest.mark.parametrize("content, error", [
    ("bogus = 1\n", "unknown key 'bogus'"),
    ("docker_socket = 'x'\n", "unknown key 'docker_socket' (did you mean 'docker-socket'?)"),
    ("resync = 'soon'\n", "resync: 'soon' is not a number"),
    ("log-format = 'xml'\n", "log-format: 'xml' is not one of text, json"),
    ("leave = 'yes'\n", "leave: 'yes' is not true or false"),
    ("resync = [\n", "not TOML"),
])
def test_a_bad_config_file_is_one_line_exit_2(tmp_path, content, error):
    conf = tmp_path / "muslind.toml"
    conf.write_text(content)
    r = subprocess.run([MUSLIND, "--config", str(conf)], env=clean_env(), capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: ") and error in r.stderr and str(conf) in r.stderr


def test_usage_errors_and_version_are_the_cli_style():
    for cmd in ([MUSLIND], [sys.executable, "-m", "muslin.control.daemon"]):
        r = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0 and r.stdout.startswith("muslind ") and r.stdout.split()[1][0].isdigit(), r
        r = subprocess.run([*cmd, "--bogus"], env=clean_env(), capture_output=True, text=True, timeout=20)
        assert (r.returncode, r.stderr) == (2, "error: no such option '--bogus' (see 'muslind --help')\n")
    r = subprocess.run([MUSLIND, "--config", "", "--cluster-store", "etcd://127.0.0.1:1"], env=clean_env(),
                       capture_output=True, text=True, timeout=20)
    assert (r.returncode, r.stderr) == (2, "error: --cluster-store and --cluster-network go together\n")
    r = subprocess.run([MUSLIND, "--config", "/nonexistent/muslind.toml"], env=clean_env(), capture_output=True,
                       text=True, timeout=20)
    assert (r.returncode, r.stderr) == (2, "error: config file /nonexistent/muslind.toml: no such file\n")


def test_journald_text_format_has_the_priority_and_no_timestamp(tmp_path):
    code = ("import logging, os, sys; st = os.fstat(2); os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'; "
            "from muslin.cli import logs; logs.setup('info'); logging.getLogger('muslin.x').warning('careful'); "
            "logging.getLogger('pyroute2').info('hidden')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert r.stderr == "<4>muslin.x: careful\n"


def test_etcd_options_are_for_etcd_stores_only(tmp_path):
    """One set of --etcd-* options serves the cluster store; a local --store ignores them."""
    sock = tmp_path / "a.sock"
    p = subprocess.Popen([MUSLIND, "--config", "", "--docker-socket", "", "--agent-socket", str(sock),
                          "--state-dir", str(tmp_path / "s"), "--store", str(tmp_path / "s" / "x.db"),
                          "--etcd-ca", str(tmp_path / "ca.pem"), "--reconcile-interval", "0"],
                         env=clean_env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(sock, p)
        assert "supportedVersions" in json.loads(ask_version(str(sock))["stdout"])
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()

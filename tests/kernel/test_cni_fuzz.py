"""Fuzzing the CNI plugin: Hypothesis over configs, environment and CNI_ARGS (issue 8).

Each example is one plugin call, made like a runtime makes it (env + stdin, from a
namespace playing the host), either in-process (`muslin-cni` / `muslin-ipam` with no agent)
or handed to a muslind started for the test in that namespace. Inputs start from a valid
config and env and get zero or more mutations: wrong types, unknown keys, bad subnets and
versions, huge or odd strings, odd env values and CNI_ARGS.

Invariants of every call:
- it ends (a timeout is a hang) and prints no traceback;
- stdout is one JSON object: a result (ADD), a version answer (VERSION), nothing (other
  verbs that succeed), or a CNI error {code: int, msg: one line} with exit status 1;
- an unmutated ADD succeeds; a successful ADD is DELed, and afterwards the host is as before;
- after every call that is not a successful ADD, the host namespace (links, addresses,
  routes), its nft ruleset, the store's keys and values, the files of the test's tmp tree
  outside the state dir and the test's entries in /run/netns are exactly as before.

Each test is parametrized by the first mutation ("none": valid calls), so every kind gets
its share. The examples are the same on every run (derandomized). Knobs:
MUSLIN_FUZZ_IN_PROCESS / MUSLIN_FUZZ_AGENT (example counts), MUSLIN_FUZZ_RANDOM=1 (new
examples; repeat one with --hypothesis-seed=N), MUSLIN_FUZZ_VERBOSE=1 (the first message
per verb:code).
"""

from __future__ import annotations

import json
import os
import sqlite3
import string
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from nsutil import NetnsFactory, sh, suffix, tool

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]

REF = "/usr/lib/cni"
CALL_TIMEOUT = 45  # seconds: a call that takes longer is a hang
VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
COMMANDS = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]
ERROR_KEYS = {"cniVersion", "code", "msg", "details"}
# Examples per mode: in-process calls cost ~0.2-0.5 s, calls through muslind ~0.02-0.1 s.
IN_PROCESS_EXAMPLES = int(os.environ.get("MUSLIN_FUZZ_IN_PROCESS", "100"))
AGENT_EXAMPLES = int(os.environ.get("MUSLIN_FUZZ_AGENT", "360"))


# ------------------------------------------------------------------------------ the world


@dataclass
class World:
    """A host namespace, a container namespace, plugin dir, state dir and tmp tree."""

    host: object
    container: object
    root: Path  # the test's tmp tree
    state: Path
    plugins: Path
    cwd: Path  # the plugins' working directory (a relative path would land here)
    token: str
    subnet: str  # "10.x.y"
    agent_sock: str = ""
    muslind: subprocess.Popen | None = None
    calls: int = 0
    adds: int = 0
    kinds: dict = field(default_factory=dict)  # "<verb>:<ok|code>" -> count
    mutations: dict = field(default_factory=dict)
    clean: dict | None = None  # baseline() before the first example
    samples: dict = field(default_factory=dict)  # "<verb>:<code>" -> first message seen

    @property
    def cni_path(self) -> str:
        return f"{self.plugins}:{REF}"


def make_world(tmp: Path, nsf: NetnsFactory) -> World:
    token = suffix()
    host, container = nsf("fzh"), nsf("fzc")
    # A parent link for macvlan configs (this kernel has no dummy links: a veth pair).
    sh("ip", "-n", host.name, "link", "add", "fzpar0", "type", "veth", "peer", "name", "fzpar1")
    sh("ip", "-n", host.name, "link", "set", "fzpar0", "up")
    plugins, state, cwd = tmp / "plugins", tmp / "state", tmp / "cwd"
    for d in (plugins, state, cwd, tmp / "files"):
        d.mkdir()
    for name in ("muslin-cni", "muslin-ipam"):
        (plugins / name).symlink_to(tool(name))
    (tmp / "files" / "resolv.conf").write_text("nameserver 10.0.0.53\nsearch fuzz.example\n")
    (tmp / "files" / "plain").write_text("not a namespace\n")
    # A fixed subnet keeps runs alike; it lives only inside the test's host namespace.
    return World(host, container, tmp, state, plugins, cwd, token, "10.213.7")


def start_muslind(w: World) -> None:
    w.agent_sock = str(w.root / "agent.sock")
    log = open(w.root / "muslind.log", "w")
    w.muslind = w.host.popen(tool("muslind"), "--docker-socket", "", "--agent-socket", w.agent_sock,
                             "--state-dir", str(w.state), "--reconcile-interval", "0", "--log-level", "warning",
                             stdout=log, stderr=subprocess.STDOUT, cwd=str(w.cwd))
    log.close()
    end = time.monotonic() + 20
    while not os.path.exists(w.agent_sock) and w.muslind.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    assert os.path.exists(w.agent_sock), (w.root / "muslind.log").read_text()


def stop_muslind(w: World) -> None:
    p = w.muslind
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


@pytest.fixture(scope="module")
def world_in_process(tmp_path_factory):
    nsf = NetnsFactory("mt")
    try:
        w = make_world(tmp_path_factory.mktemp("fuzz-inproc"), nsf)
        w.agent_sock = str(w.root / "no-agent.sock")  # does not exist: the plugin works in-process
        yield w
        print(f"\nin-process fuzz: {w.calls} calls, {w.adds} successful ADDs, {w.kinds}, mutations {w.mutations}")
        if os.environ.get("MUSLIN_FUZZ_VERBOSE"):
            print("\n".join(f"  {k}: {v}" for k, v in sorted(w.samples.items())))
    finally:
        nsf.cleanup()


@pytest.fixture(scope="module")
def world_agent(tmp_path_factory):
    nsf = NetnsFactory("mt")
    w = None
    try:
        w = make_world(tmp_path_factory.mktemp("fuzz-agent"), nsf)
        start_muslind(w)
        yield w
        print(f"\nmuslind fuzz: {w.calls} calls, {w.adds} successful ADDs, {w.kinds}, mutations {w.mutations}")
        if os.environ.get("MUSLIN_FUZZ_VERBOSE"):
            print("\n".join(f"  {k}: {v}" for k, v in sorted(w.samples.items())))
    finally:
        if w is not None:
            stop_muslind(w)
        nsf.cleanup()
    assert w.muslind is not None and w.muslind.returncode == 0, (w.root / "muslind.log").read_text()[-3000:]


# ------------------------------------------------------------------------------ observing the host


def snapshot(w: World, ignore_last: bool = False) -> dict:
    """Everything a refused call must leave as it was."""
    out = w.host.run("sh", "-c", "ip -j link; echo @@; ip -j addr; echo @@; ip -j route show table all; echo @@; "
                                 "ip -6 -j route show table all; echo @@; nft list ruleset").stdout
    parts = out.split("@@\n", 4)
    links, addrs, r4, r6 = (json.loads(p or "[]") for p in parts[:4])
    for a in addrs:  # IPv6 link-local addresses come and go with links: compared via the links
        a["addr_info"] = [i for i in a.get("addr_info", []) if not str(i.get("local", "")).startswith("fe80:")]
    for a in links + addrs:
        a.pop("operstate", None)
    r6 = [r for r in r6 if not str(r.get("dst", "")).startswith(("fe80:", "ff00:"))]
    return {"links": links, "addrs": addrs, "routes": r4 + r6, "nft": parts[4],
            "store": store_dump(w.state, ignore_last), "files": files(w), "netns": netns_entries(w)}


def store_dump(state: Path, ignore_last: bool) -> dict:
    db = state / "muslin.db"
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = dict(con.execute("SELECT key, value FROM kv").fetchall())
    except sqlite3.OperationalError:  # no schema yet
        return {}
    finally:
        con.close()
    if ignore_last:  # round-robin state: an ADD+DEL legitimately moves it on
        rows = {k: v for k, v in rows.items() if not (k.startswith("ipam/") and k.endswith("/last"))}
    return rows


def files(w: World) -> list[tuple[str, bool, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(w.root):
        d = Path(dirpath)
        if d == w.state:
            dirnames[:] = []
            continue
        for n in dirnames:
            out.append((str((d / n).relative_to(w.root)), True, 0))
        for n in filenames:
            p = d / n
            if p.name.startswith("muslind.log"):
                continue
            out.append((str(p.relative_to(w.root)), False, p.lstat().st_size))
    return sorted(out)


def netns_entries(w: World) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if w.token in n)
    except FileNotFoundError:
        return []


def diff(a: dict, b: dict) -> str:
    """What changed, per part: items gone (-) and new (+)."""
    out = []
    for k in a:
        x, y = a[k], b[k]
        if x == y:
            continue
        if isinstance(x, dict):
            x, y = sorted(f"{i}={v}" for i, v in x.items()), sorted(f"{i}={v}" for i, v in y.items())
        elif isinstance(x, str):
            x, y = x.splitlines(), y.splitlines()
        xs, ys = [json.dumps(i, sort_keys=True) for i in x], [json.dumps(i, sort_keys=True) for i in y]
        gone, new = [i for i in xs if i not in ys], [i for i in ys if i not in xs]
        out.append(f"{k}: -{gone} +{new}"[:1500])
    return "; ".join(out)


# ------------------------------------------------------------------------------ calling the plugin


@dataclass
class Call:
    plugin: str  # "muslin-cni" | "muslin-ipam"
    env: dict
    stdin: bytes
    expect_ok: bool = False  # an unmutated ADD: must succeed
    mutations: tuple = ()


def run(w: World, c: Call, command: str | None = None) -> tuple[int, str, str]:
    env = {"PATH": os.environ["PATH"], "MUSLIN_STATE_DIR": str(w.state), "MUSLIN_AGENT_SOCKET": w.agent_sock,
           **c.env}
    if command is not None:
        env["CNI_COMMAND"] = command
    exe = str(w.plugins / c.plugin)
    try:
        p = subprocess.run(["ip", "netns", "exec", w.host.name, exe], input=c.stdin, env=env, cwd=str(w.cwd),
                           capture_output=True, timeout=CALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{c.plugin} {env.get('CNI_COMMAND')} hung for {CALL_TIMEOUT}s: {c}")
    w.calls += 1
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def check_output(c: Call, rc: int, out: str, err: str, command: str) -> dict | None:
    """The output contract; returns the parsed object (None for empty stdout)."""
    assert "Traceback" not in out + err, f"traceback for {c}:\n{out}\n{err}"
    text = out.strip()
    if command == "":  # like skel: an "about" line on stderr, exit 0
        assert rc == 0 and text == "" and "CNI protocol versions supported" in err, (rc, out, err)
        return None
    if rc == 0 and command not in ("ADD", "VERSION") and command in COMMANDS:
        assert text == "", f"{command} succeeded but printed {text!r} for {c}"
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        raise AssertionError(f"stdout is not one JSON object (rc {rc}): {text[:500]!r}; stderr {err[:500]!r}; "
                             f"{c}") from None
    assert isinstance(obj, dict), obj
    if rc == 0:
        if command == "VERSION":
            assert isinstance(obj.get("supportedVersions"), list) and obj.get("cniVersion") in VERSIONS, obj
        else:
            assert obj.get("cniVersion") in VERSIONS and "code" not in obj, obj
            for key in ("interfaces", "ips", "routes"):  # driver none: no ips; 0.1.0/0.2.0: ip4/ip6
                assert isinstance(obj.get(key, []), list), obj
        return obj
    assert rc == 1, f"exit status {rc} (want 1 with an error object) for {c}: {obj}"
    assert set(obj) <= ERROR_KEYS, obj
    code = obj.get("code")
    assert isinstance(code, int) and not isinstance(code, bool) and code > 0, obj
    msg = obj.get("msg")
    assert isinstance(msg, str) and msg and "\n" not in msg and len(msg) <= 1000, obj
    assert "Traceback" not in msg and "internal error" not in msg, f"internal error for {c}: {obj}"
    return obj


def exercise(w: World, c: Call) -> None:
    command = c.env.get("CNI_COMMAND", "")
    before = snapshot(w)
    rc, out, err = run(w, c)
    try:
        obj = check_output(c, rc, out, err, command)
    except AssertionError:
        if rc == 0 and command == "ADD":  # leave the world clean for the examples that follow
            run(w, c, "DEL")
        raise
    key = f"{command if command in COMMANDS else '?'}:{'ok' if rc == 0 else obj.get('code') if obj else rc}"
    w.kinds[key] = w.kinds.get(key, 0) + 1
    if obj and rc != 0:
        w.samples.setdefault(key, obj.get("msg", "")[:160])
    for m in c.mutations:
        w.mutations[m] = w.mutations.get(m, 0) + 1
    if c.expect_ok:
        assert rc == 0, f"a valid ADD was refused: {obj} for {c}"
    if rc == 0 and command == "ADD":
        w.adds += 1
        # DEL with the same env and config (plus the result, as runtimes pass it).
        stdin = c.stdin
        try:
            conf = json.loads(c.stdin)
            if isinstance(conf, dict) and conf.get("cniVersion", "0.1.0") not in ("0.1.0", "0.2.0", "0.3.0",
                                                                                  "0.3.1"):
                stdin = json.dumps({**conf, "prevResult": obj}).encode()
        except ValueError:
            pass
        drc, dout, derr = run(w, Call(c.plugin, c.env, stdin), "DEL")
        assert "Traceback" not in dout + derr, derr
        assert drc == 0 and dout.strip() == "", f"DEL after ADD failed: {dout} {derr[-500:]} for {c}"
        settle(w)
        after = snapshot(w, ignore_last=True)
        # An accepted config may name another state dir: its store's files are its own.
        other = tuple(str(Path(d)) + "/" for d in data_dirs(c.stdin) if Path(d) != w.state)
        base = dict(before, store=store_dump_filtered(before["store"]),
                    files=[f for f in before["files"] if not str(w.root / f[0]).startswith(other)])
        after["files"] = [f for f in after["files"] if not str(w.root / f[0]).startswith(other)]
        assert after == base, f"ADD+DEL left something: {diff(base, after)} for {c}"
        return
    after = snapshot(w)
    assert after == before, f"{command} (rc {rc}, {obj}) changed the host: {diff(before, after)} for {c}"


from muslin.model.names import REAP_GROUP  # noqa: E402 - the link group of retired veths


def settle(w: World, timeout: float = 5) -> None:
    """muslind deletes a DEL's retired veth just after answering and then frees the addresses
    it held (control/reaper.py: the link group REAP_GROUP, owners reap/<ifname>): wait for that."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        links = json.loads(w.host.run("ip", "-j", "link").stdout or "[]")
        if not any(str(x.get("group")) == str(REAP_GROUP) for x in links) and \
                not any(k.startswith("ipam-owner/reap/") for k in store_dump(w.state, False)):
            return
        time.sleep(0.05)


def data_dirs(stdin: bytes) -> list[str]:
    try:
        conf = json.loads(stdin)
    except ValueError:
        return []
    ipam = conf.get("ipam") if isinstance(conf, dict) else None
    return [d for d in (conf.get("dataDir") if isinstance(conf, dict) else None,
                        ipam.get("dataDir") if isinstance(ipam, dict) else None) if isinstance(d, str) and d]


def baseline(w: World) -> dict:
    """What no example may change for good (the files may gain other state dirs)."""
    s = snapshot(w, ignore_last=True)
    s.pop("files")
    return s


def require_clean(w: World) -> None:
    if w.clean is None:
        w.clean = baseline(w)
    now = baseline(w)
    assert now == w.clean, f"the host was left changed by an earlier failing example: {diff(w.clean, now)}"


def store_dump_filtered(rows: dict) -> dict:
    return {k: v for k, v in rows.items() if not (k.startswith("ipam/") and k.endswith("/last"))}


# ------------------------------------------------------------------------------ strategies

ODD_STRINGS = ["", " ", "\n", "a\n", "\nx", "\t", "\x00", "\x7f", "é", "☃", "\u202e", "\ufeff",
               "../x", "-x", ".", "..", "a/b", "a:b", "a b", "0", "null", "true", "[]", "{}", "%s", "'", '"',
               "x" * 16, "x" * 300, "y" * 20000]
ODD_VALUES = [None, True, False, 0, -1, 1.5, 2 ** 63, "", "x", [], {}, [1, "a"], {"a": {"b": [None]}}]


def odd_string() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=24))


def odd_value() -> st.SearchStrategy[object]:
    return st.one_of(st.sampled_from(ODD_VALUES), odd_string(),
                     st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                  lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                                      st.text(max_size=6), inner, max_size=3), max_leaves=6))


def env_string() -> st.SearchStrategy[str]:
    return odd_string().map(lambda s: s.replace("\x00", ""))  # execve cannot pass a NUL


BAD_SUBNETS = ["0.0.0.0/0", "::/0", "{n}.0/24\n", " {n}.0/24", "{n}.5/24", "{n}.0", "300.1.0.0/24", "{n}.0/33",
               "{n}.0/31", "{n}.0/32", "fe80::/64", "127.0.0.0/8", "224.0.0.0/24", "ff02::/16", "0.0.0.0/1",
               "", "x", "10.0.0.0/8/8", "{n}.0/-1", "::ffff:{n}.0/120", "y" * 5000]
BAD_VERSIONS = ["", "1", "0.0.0", "9.9.9", "1.1.0\n", " 1.0.0", "v1.0.0", "1.0.0.0", "0.5.0", "2.0.0", "01.0.0"]
BAD_ARGS = ["IP={n}.5/8", "IP={n}.5;;MAC=02:00:00:00:00:01", ";;", ";", "IP={n}.5;", "IP=", "MAC=", "IP={n}.5,",
            "IP={n}.5,{n}.5", "IP={n}.5;IP={n}.6", "IP= {n}.5", "IP=x", "MAC=zz", "MAC=01:00:5e:00:00:01",
            "MAC=ff:ff:ff:ff:ff:ff", "MAC=00:00:00:00:00:00", "MAC=02:00:00:00:00:01 ", "FOO=1", "=1", "IP",
            "IP==", "IgnoreUnknown=0;X=1", "IP={n}.0", "IP={n}.255", "IP={n}.1", "IP=10.9.9.9", "IP=fd00::5",
            "IP={n}.5,{n}.6", "K" * 3000 + "=1"]
BAD_MACS = ["zz", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "02:00:00:00:00:01\n",
            "02-00-00-00-00-01", "02:00:00:00:00", 5, None, ["02:00:00:00:00:01"]]


KINDS = ["top-key", "ipam-key", "unknown-key", "drop-key", "subnet", "version", "env", "drop-env", "args", "mac",
         "ips", "ports", "prev", "gc", "attach-odd", "raw", "path", "bridge", "driver"]


@st.composite
def calls(draw, w: World, first: str) -> Call:
    """One plugin call: a valid config and env, then mutation `first` ("none": none) and
    up to two more of any kind."""
    n = w.subnet
    plugin = draw(st.sampled_from(["muslin-cni"] * 4 + ["muslin-ipam"]))
    version = draw(st.sampled_from(["0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.1.0"]))
    name = draw(st.sampled_from(["fza", "fzb", "fz-long-network-name-beyond-15"]))
    ranges = [[{"subnet": f"{n}.0/24"}]]
    if draw(st.booleans()):
        ranges[0][0].update(rangeStart=f"{n}.10", rangeEnd=f"{n}.200")
    if draw(st.integers(0, 3)) == 0:
        ranges.append([{"subnet": f"fd00:{n.split('.')[1]}:{n.split('.')[2]}::/64"}])
    ipam: dict = {"type": "muslin-ipam", "ranges": ranges}
    if draw(st.booleans()):
        ipam["routes"] = [{"dst": "0.0.0.0/0"}]
    if draw(st.integers(0, 4)) == 0:
        ipam["resolvConf"] = str(w.root / "files" / "resolv.conf")
    conf: dict = {"cniVersion": version, "name": name, "type": plugin, "ipam": ipam}
    driver = draw(st.sampled_from(["bridge"] * 6 + ["macvlan", "none"]))
    if driver != "bridge":
        conf["driver"] = driver
    if driver == "macvlan":
        conf["master"] = "fzpar0"
        conf["mode"] = draw(st.sampled_from(["bridge", "private", "vepa"]))
    for key in ("isGateway", "isDefaultGateway", "ipMasq", "hairpinMode"):
        if draw(st.booleans()):
            conf[key] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        conf["mtu"] = draw(st.integers(1280, 1500))
    if draw(st.integers(0, 3)) == 0:
        conf["dataDir"] = str(w.state)
    rc: dict = {}
    if draw(st.integers(0, 3)) == 0:
        rc["portMappings"] = [{"hostPort": draw(st.integers(20000, 30000)), "containerPort": 80,
                               "protocol": draw(st.sampled_from(["tcp", "udp"]))}]
    if draw(st.integers(0, 4)) == 0:
        rc["ips"] = [f"{n}.{draw(st.integers(20, 199))}"]
    if draw(st.integers(0, 5)) == 0:
        rc["mac"] = f"02:00:00:00:{draw(st.integers(0, 255)):02x}:01"
    if rc:
        conf["runtimeConfig"] = rc
    cid = "fz" + draw(st.text(string.hexdigits, min_size=4, max_size=12))
    env = {"CNI_COMMAND": draw(st.sampled_from(["ADD"] * 6 + ["DEL", "CHECK", "GC", "STATUS", "VERSION"])),
           "CNI_CONTAINERID": cid, "CNI_IFNAME": draw(st.sampled_from(["eth0", "net1", "e" * 15])),
           "CNI_NETNS": w.container.path, "CNI_PATH": w.cni_path}
    if env["CNI_COMMAND"] == "GC":
        conf["cni.dev/valid-attachments"] = [{"containerID": cid, "ifname": "eth0"}]
    if draw(st.integers(0, 3)) == 0 and "ips" not in rc:
        env["CNI_ARGS"] = draw(st.sampled_from(["IgnoreUnknown=1;K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns",
                                                f"IP={n}.{draw(st.integers(20, 199))}",
                                                f"IP={n}.{draw(st.integers(20, 199))}/24",
                                                "MAC=02:00:00:00:aa:01"]))
    if driver != "bridge" and plugin == "muslin-cni":
        rc.pop("portMappings", None)  # only a bridge publishes ports
    if driver == "none" and plugin == "muslin-cni":  # no addresses: no subnets, no requested IPs
        conf.pop("ipam")
        rc.pop("ips", None)
        if "IP=" in env.get("CNI_ARGS", ""):
            env.pop("CNI_ARGS")
    if not rc:
        conf.pop("runtimeConfig", None)

    mutations: list[str] = []
    stdin: bytes | None = None
    kinds = [] if first == "none" else [first] + [draw(st.sampled_from(KINDS)) for _ in range(draw(st.integers(0, 2)))]
    for kind in kinds:
        mutations.append(kind)
        if kind == "top-key":
            key = draw(st.sampled_from(["name", "type", "bridge", "isGateway", "isDefaultGateway", "ipMasq", "mtu",
                                        "hairpinMode", "promiscMode", "driver", "network", "isolate", "internal",
                                        "master", "mode", "dataDir", "agentSocket", "ipam", "dns", "args",
                                        "runtimeConfig", "capabilities", "cniVersions", "disableCheck", "vlan",
                                        "ipMasqBackend", "forceAddress", "prevResult"]))
            conf[key] = draw(odd_value())
        elif kind == "ipam-key":
            key = draw(st.sampled_from(["type", "ranges", "subnet", "rangeStart", "rangeEnd", "gateway", "routes",
                                        "dataDir", "resolvConf", "agentSocket"]))
            if isinstance(conf.get("ipam"), dict):
                conf["ipam"][key] = draw(odd_value())
        elif kind == "unknown-key":
            where = conf["ipam"] if isinstance(conf.get("ipam"), dict) and draw(st.booleans()) else conf
            where[draw(st.sampled_from(["plugins", "bogus", "Bridge", "ipam2", "x" * 200]))] = draw(odd_value())
        elif kind == "drop-key":
            key = draw(st.sampled_from(["name", "cniVersion", "ipam", "type"]))
            conf.pop(key, None)
        elif kind == "subnet":
            bad = draw(st.sampled_from(BAD_SUBNETS)).format(n=n)
            where = draw(st.sampled_from(["ranges", "legacy", "ipRanges", "route"]))
            if where == "ranges" and isinstance(conf.get("ipam"), dict):
                conf["ipam"]["ranges"] = [[{"subnet": bad}]]
            elif where == "legacy" and isinstance(conf.get("ipam"), dict):
                conf["ipam"].pop("ranges", None)
                conf["ipam"]["subnet"] = bad
            elif where == "ipRanges":
                sub(conf, "runtimeConfig")["ipRanges"] = [[{"subnet": bad}]]
            elif isinstance(conf.get("ipam"), dict):
                conf["ipam"]["routes"] = [{"dst": bad, "gw": draw(st.sampled_from([f"{n}.1", "x", ""]))}]
        elif kind == "version":
            conf["cniVersion"] = draw(st.one_of(st.sampled_from(BAD_VERSIONS), st.sampled_from(VERSIONS),
                                                odd_value()))
        elif kind == "env":
            var = draw(st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_PATH"]))
            env[var] = draw(st.one_of(env_string(), st.sampled_from(odd_env(w, var))))
        elif kind == "drop-env":
            env.pop(draw(st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS",
                                          "CNI_PATH"])), None)
        elif kind == "args":
            env["CNI_ARGS"] = draw(st.one_of(st.sampled_from(BAD_ARGS).map(lambda s: s.format(n=n)), env_string()))
        elif kind == "mac":
            mac = draw(st.sampled_from(BAD_MACS))
            where = draw(st.sampled_from(["args", "runtimeConfig"]))
            if where == "args":
                conf["args"] = {"cni": {"mac": mac}}
            else:
                sub(conf, "runtimeConfig")["mac"] = mac
        elif kind == "ips":
            v = draw(st.one_of(st.sampled_from([f"{n}.5", [f"{n}.5/8"], [f"{n}.5", f"{n}.5"], [5], [f"{n}.0"],
                                                [f"{n}.255"], [f"{n}.1"], ["x"], [f"{n}.5\n"], {"a": 1}]),
                               odd_value()))
            if draw(st.booleans()):
                conf["args"] = {"cni": {"ips": v}}
            else:
                sub(conf, "runtimeConfig")["ips"] = v
        elif kind == "ports":
            sub(conf, "runtimeConfig")["portMappings"] = draw(st.one_of(
                st.sampled_from([[{"hostPort": 0, "containerPort": 80}], [{"hostPort": 70000, "containerPort": 1}],
                                 [{"hostPort": "80", "containerPort": 80}], [{"hostPort": 8080}],
                                 [{"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}],
                                 [{"hostPort": 8080, "containerPort": 80, "hostIP": "x"}], ["x"], "x"]),
                odd_value()))
        elif kind == "prev":
            conf["prevResult"] = draw(st.one_of(
                st.sampled_from([{"cniVersion": "1.0.0", "ips": [{"address": "x"}]},
                                 {"cniVersion": "1.0.0", "ips": [{"address": f"{n}.5/24", "interface": 9}]},
                                 {"cniVersion": "1.0.0", "interfaces": "x"}, {"cniVersion": "7.0.0"},
                                 {"ip4": {"ip": 5}}, {"cniVersion": "1.0.0", "routes": [{"dst": 1}]}]),
                odd_value()))
        elif kind == "gc":
            env["CNI_COMMAND"] = "GC"
            conf["cniVersion"] = "1.1.0"
            conf["cni.dev/valid-attachments"] = draw(st.one_of(
                st.sampled_from([[{"ifname": "eth0"}], [{"containerID": cid}], [{"containerID": "", "ifname": ""}],
                                 ["x"], "x", [None]]), odd_value()))
        elif kind == "attach-odd":
            sub(conf, "runtimeConfig")["aliases"] = draw(odd_value())
        elif kind == "raw":
            stdin = draw(st.sampled_from([b"", b" ", b"{", b"[]", b"null", b"\"x\"", b"1", b"\xff\xfe",
                                          b"{\"cniVersion\": \"1.0.0\"", b"{}" * 3, b"\x00",
                                          json.dumps([conf]).encode(), b"{\"a\": " * 2000 + b"1" + b"}" * 2000,
                                          json.dumps({**conf, "pad": "z" * 300000}).encode()]))
        elif kind == "path":
            key = draw(st.sampled_from(["dataDir", "ipam.dataDir", "ipam.resolvConf", "agentSocket"]))
            val = draw(st.sampled_from(["rel", ".", "state", "", None, "/", str(w.root / "other-state"),
                                        str(w.root / "files" / "plain"), str(w.root / "files"),
                                        "/dev/zero", "/proc/self/fd/0", "/nonexistent/x", "/a\nb", "/a\x00b",
                                        str(w.root / "files" / "fifo")]))
            if key.startswith("ipam."):
                if isinstance(conf.get("ipam"), dict):
                    conf["ipam"][key[5:]] = val
            else:
                conf[key] = val
        elif kind == "bridge":
            conf["bridge"] = draw(st.one_of(st.sampled_from(["lo", "fzpar0", "e" * 16, "a/b", "a b", "a\nb", ".",
                                                             "br\x01x", "", "mus-other"]), odd_value()))
        elif kind == "driver":
            conf["driver"] = draw(st.sampled_from(["ipvlan", "macvlan", "host", "container", "overlay", "", "x"]))
            if conf["driver"] == "macvlan":
                conf["master"] = draw(st.sampled_from(["lo", "nolink0", "fzpar0", "", "a/b"]))
                conf["mode"] = draw(st.sampled_from(["bridge", "source", "passthru", "x"]))
    if stdin is None:
        stdin = json.dumps(conf).encode()
    expect_ok = not mutations and env["CNI_COMMAND"] == "ADD"
    return Call(plugin, env, stdin, expect_ok, tuple(mutations))


def sub(d: dict, key: str) -> dict:
    """d[key] as a dict to mutate (an earlier mutation may have made it something else)."""
    if not isinstance(d.get(key), dict):
        d[key] = {}
    return d[key]


def odd_env(w: World, var: str) -> list[str]:
    common = ["", " ", "x\n", "-x", "a b", "x" * 5000]
    return {
        "CNI_COMMAND": ["add", "FOO", "ADD\n", " ADD", "VERSION ", "DEL;ADD"],
        "CNI_CONTAINERID": ["abc\n", "-abc", "a/b", "a b", ".", "é"],
        "CNI_IFNAME": ["x" * 16, "..", ".", "a/b", "a:b", "a b", "eth0\n", "lo", "é" * 8],
        "CNI_NETNS": [f"/run/netns/{w.token}-missing", "/proc/self/ns/net", str(w.root / "files"),
                      str(w.root / "files" / "plain"), "/dev/null", "relative", f"{w.container.path}\n",
                      "/proc/self/ns/mnt"],
        "CNI_PATH": ["relative", "/nonexistent", ":::", str(w.root / "files")],
    }[var] + common


# ------------------------------------------------------------------------------ the tests

# CI runs the same examples every time; MUSLIN_FUZZ_RANDOM=1 explores new ones (with
# pytest's --hypothesis-seed=N to repeat a run).
SETTINGS = dict(deadline=None, derandomize=os.environ.get("MUSLIN_FUZZ_RANDOM") != "1", phases=[Phase.explicit, Phase.generate], database=None,
                suppress_health_check=list(HealthCheck), print_blob=False)


def make_fifo(w: World) -> None:
    fifo = w.root / "files" / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)


def examples(total: int, kind: str) -> int:
    """Per mutation kind (each test is parametrized by the first mutation): a fifth of the
    examples are valid calls, the rest is shared by the kinds."""
    return max(1, total // 5) if kind == "none" else max(2, total * 4 // 5 // len(KINDS))


@pytest.mark.parametrize("kind", ["none", *KINDS])
def test_fuzz_in_process(world_in_process, kind):
    w = world_in_process
    make_fifo(w)
    require_clean(w)

    @settings(max_examples=examples(IN_PROCESS_EXAMPLES, kind), **SETTINGS)
    @given(c=calls(w, kind))
    def one(c: Call) -> None:
        exercise(w, c)

    one()


@pytest.mark.parametrize("kind", ["none", *KINDS])
def test_fuzz_through_muslind(world_agent, kind):
    w = world_agent
    make_fifo(w)
    require_clean(w)

    @settings(max_examples=examples(AGENT_EXAMPLES, kind), **SETTINGS)
    @given(c=calls(w, kind))
    def one(c: Call) -> None:
        assert w.muslind is not None and w.muslind.poll() is None, (w.root / "muslind.log").read_text()[-3000:]
        exercise(w, c)

    one()
    assert w.muslind is not None and w.muslind.poll() is None, (w.root / "muslind.log").read_text()[-3000:]

"""WireGuard on this host, for the agent's wireguard backend: what the host supports (the
kernel module, or wireguard-go on TUN), the key file, the interface (made, configured and
read with `wg`, which speaks to the kernel module and to wireguard-go's UAPI socket alike),
and `WireGuardHost`, the companion the agent supervises.

wireguard-go daemonizes in a session of its own, so neither a restart nor a kill -9 of
the agent touches it; the agent finds it again by its interface (and the process by its
command line in this network namespace). Its UAPI socket is /var/run/wireguard/NAME.sock
on the shared filesystem, so interface names must be unique per machine, not only per
namespace: `ifname()` adds a hash of the network namespace.

The private key is read from its file by `wg` itself (`private-key FILE`) and never passes
through an argument, a log line or an error message; `wg show dump`'s first field (the
private key) is dropped as it is read.

Test knobs: MUSLIN_WIREGUARD_GO, MUSLIN_WG (binaries), MUSLIN_TUN (the TUN device node).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from muslin.model.errors import Invalid, Unavailable, Unsupported
from muslin.model.kernel import WgDev, WgPeer

RUN_DIR = Path("/var/run/wireguard")
KEY_FILE = "wireguard.key"
TIMEOUT = 10.0


# -- what the host supports ------------------------------------------------------------

@dataclass(frozen=True)
class Support:
    kernel_module: bool  # /sys/module/wireguard: loaded or built in
    tun: bool  # /dev/net/tun can be opened
    wg: str  # path of `wg` (wireguard-tools), "" = none
    wireguard_go: str  # path of wireguard-go, "" = none


def support() -> Support:
    tun = os.environ.get("MUSLIN_TUN", "/dev/net/tun")
    try:
        os.close(os.open(tun, os.O_RDWR))
        has_tun = True
    except OSError:
        has_tun = False
    return Support(Path("/sys/module/wireguard").exists(), has_tun,
                   shutil.which(os.environ.get("MUSLIN_WG", "wg")) or "",
                   shutil.which(os.environ.get("MUSLIN_WIREGUARD_GO", "wireguard-go")) or "")


def choose(s: Support) -> str:
    """'kernel' or 'wireguard-go'; Unsupported naming everything that is missing (pure)."""
    if s.wg and s.kernel_module:
        return "kernel"
    if s.wg and s.tun and s.wireguard_go:
        return "wireguard-go"
    missing = ["no wg binary (apt-get install wireguard-tools)"] if not s.wg else []
    if not s.kernel_module:
        userspace = [m for ok, m in ((s.tun, "no TUN device (/dev/net/tun)"),
                                     (s.wireguard_go, "no wireguard-go binary (apt-get install wireguard-go)")) if not ok]
        if userspace:
            missing.append("no wireguard kernel module, and for the userspace fallback " + " and ".join(userspace))
    raise Unsupported("wireguard backend: this host cannot run WireGuard: " + "; ".join(missing))


def probe() -> str:
    return choose(support())


def _bin(what: str) -> str:
    s = support()
    path = s.wg if what == "wg" else s.wireguard_go
    if not path:
        choose(s)
        raise Unsupported(f"wireguard backend: no {what} binary")
    return path


def ifname(network: str) -> str:
    """The host's WireGuard interface for a network: `mw-<network>-<4 hex>`, the hex a hash
    of this network namespace (init_net's is the same on every boot)."""
    ns = os.stat("/proc/self/ns/net").st_ino
    base = network if len(network) <= 7 else network[:2] + hashlib.sha256(network.encode()).hexdigest()[:5]
    return f"mw-{base}-{hashlib.sha256(f'{network}/{ns}'.encode()).hexdigest()[:4]}"


# -- keys ---------------------------------------------------------------------------------

def _wg(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run([_bin("wg"), *args], input=input, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"wireguard: `wg {args[0]}` did not answer within {TIMEOUT:.0f} s") from None
    if check and r.returncode != 0:
        # stderr only: stdout may hold key material
        raise Unavailable(f"wireguard: wg {' '.join(a for a in args[:2])}: "
                          f"{(r.stderr.strip().splitlines() or ['failed'])[-1]}")
    return r


def public_key(path: Path) -> str:
    try:
        with open(path) as f:
            return _wg("pubkey", input=f.read()).stdout.strip()
    except OSError as e:
        raise Unavailable(f"wireguard: cannot read the key file {path}: {e.strerror or e}") from None


def write_key(path: Path) -> str:
    """A new private key in `path` (mode 0600, replaced atomically); returns its public key."""
    tmp = path.with_name(path.name + ".new")
    key = _wg("genkey").stdout.strip()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (key + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except OSError as e:
        raise Unavailable(f"wireguard: cannot write the key file {path}: {e.strerror or e}") from None
    finally:
        del key
    return public_key(path)


def ensure_key(path: Path) -> str:
    """The host's key pair, made once; returns the public key. A key file readable by
    others is refused rather than used."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return write_key(path)
    if st.st_mode & 0o077:
        raise Invalid(f"wireguard: {path} is readable by others (mode {st.st_mode & 0o777:o}); "
                      f"chmod 600 it or remove it to get a new key")
    return public_key(path)


# -- the interface ------------------------------------------------------------------------

def exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def _netns() -> str:
    return os.readlink("/proc/self/ns/net")


def find_pid(name: str) -> int:
    """The wireguard-go serving interface `name` in this network namespace (0: none)."""
    me = _netns()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            if not argv or os.path.basename(argv[0]) != b"wireguard-go" or name.encode() not in argv[1:]:
                continue
            if os.readlink(d / "ns" / "net") == me:
                return int(d.name)
        except OSError:
            continue
    return 0


def start_userspace(name: str, log: str = "") -> int:
    """Start wireguard-go for `name` (it daemonizes in a new session); returns its PID."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOG_LEVEL", "WG_PROCESS_FOREGROUND", "WG_TUN_FD", "WG_UAPI_FD", "WG_TUN_NAME_FILE")}
    env["WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"] = "1"
    out: Any = subprocess.DEVNULL
    if log:
        try:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")
        except OSError as e:
            raise Unavailable(f"wireguard: cannot open {log}: {e.strerror or e}") from None
        env["LOG_LEVEL"] = "error"  # the daemon keeps these as its stdout/stderr
    try:
        r = subprocess.run([_bin("wireguard-go"), name], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                           start_new_session=True, cwd="/", timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"wireguard: wireguard-go {name} did not daemonize within {TIMEOUT:.0f} s") from None
    finally:
        if log:
            out.close()
    if r.returncode != 0:
        raise Unavailable(f"wireguard: wireguard-go {name} exited with status {r.returncode}"
                          + (f", see {log}" if log else ""))
    end = time.monotonic() + 5
    while time.monotonic() < end:
        pid = find_pid(name)
        if pid and exists(name):
            return pid
        time.sleep(0.02)
    raise Unavailable(f"wireguard: wireguard-go {name} started but its interface did not appear")


def create(dev: WgDev) -> None:
    if dev.userspace:
        start_userspace(dev.name, dev.log)
    else:
        r = subprocess.run(["ip", "link", "add", "dev", dev.name, "type", "wireguard"], capture_output=True,
                           text=True, timeout=TIMEOUT)
        if r.returncode != 0:
            if "not supported" in r.stderr.lower() or "unknown device type" in r.stderr.lower():
                raise Unsupported("wireguard: kernel module wireguard is not available")
            raise Unavailable(f"wireguard: ip link add {dev.name} type wireguard: {r.stderr.strip()}")
    configure(dev)


def configure(dev: WgDev) -> None:
    """Listen port and private key (read from its file by wg)."""
    if not dev.key_file:
        raise Invalid(f"wireguard: no key file for {dev.name}")
    _wg("set", dev.name, "listen-port", str(dev.port), "private-key", dev.key_file)


def delete(name: str) -> None:
    """Remove the interface (wireguard-go exits when its TUN device goes)."""
    if exists(name):
        subprocess.run(["ip", "link", "del", "dev", name], capture_output=True, timeout=TIMEOUT)
    pid = find_pid(name)
    if pid:
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 3
    while pid and time.monotonic() < end and Path(f"/proc/{pid}").exists():
        time.sleep(0.02)
    sock = RUN_DIR / f"{name}.sock"
    if not find_pid(name) and sock.exists():
        sock.unlink(missing_ok=True)  # left by a killed wireguard-go


@dataclass(frozen=True)
class Shown:
    """`wg show NAME dump` without the private key."""

    public_key: str
    port: int
    peers: tuple[WgPeer, ...]
    handshakes: tuple[tuple[str, int, int, int], ...]  # (public key, latest handshake epoch, rx, tx)


def parse_dump(name: str, text: str) -> Shown:
    """Pure. The first line's first field is the private key: it is dropped here."""
    lines = [ln.split("\t") for ln in text.splitlines() if ln.strip()]
    if not lines or len(lines[0]) < 4:
        raise Invalid(f"wireguard: unexpected `wg show {name} dump` output")
    _priv, pub, port = lines[0][:3]
    peers, hs = [], []
    for f in lines[1:]:
        if len(f) < 8:
            continue
        key, _psk, endpoint, allowed, latest, rx, tx, ka = f[:8]
        allowed_ips = tuple(sorted(a for a in allowed.split(",") if a and a != "(none)"))
        peers.append(WgPeer(name, key, "" if endpoint == "(none)" else endpoint, allowed_ips,
                            0 if ka == "off" else int(ka)))
        hs.append((key, int(latest), int(rx), int(tx)))
    return Shown("" if pub == "(none)" else pub, int(port), tuple(peers), tuple(hs))


def show(name: str) -> Shown | None:
    """The interface as wg sees it; None when there is none."""
    r = _wg("show", name, "dump", check=False)
    if r.returncode != 0:
        if "No such device" in r.stderr or "Unable to access interface" in r.stderr:
            return None
        raise Unavailable(f"wireguard: wg show {name}: {(r.stderr.strip().splitlines() or ['failed'])[-1]}")
    return parse_dump(name, r.stdout)


def set_peers(name: str, remove: list[str], peers: list[WgPeer]) -> None:
    """One `wg set` for all the peer changes of an interface: removals first, then each
    added or changed peer (its allowed-ips replaced; sessions of untouched peers stay)."""
    args = ["set", name]
    for key in remove:
        args += ["peer", key, "remove"]
    for p in peers:
        args += ["peer", p.public_key, "endpoint", p.endpoint, "allowed-ips", ",".join(p.allowed_ips) or "",
                 "persistent-keepalive", str(p.keepalive) if p.keepalive else "off"]
    if len(args) > 2:
        _wg(*args)


# -- the companion the agent supervises -----------------------------------------------

class WireGuardHost:
    """The host side of the wireguard backend: the key pair (<state>/wireguard.key), the
    interface name and implementation (facts for the backend), key rotation, and a cheap
    check each second that the interface is still there (a dead wireguard-go takes its
    TUN device along: the agent then reconciles, which starts it again and reconfigures it)."""

    def __init__(self, state_dir: Path, network: str, log: Callable[[str], None],
                 options: Mapping[str, Any] | None = None) -> None:
        self.key_path = Path(state_dir) / KEY_FILE
        self.network = network
        self.name = ifname(network)
        self.wg_log = str(Path(state_dir) / "cluster" / f"{network}.wireguard-go.log")
        self.log = log
        self.rotate_every = int((options or {}).get("rotate_every", 0))
        self.impl = ""
        self._sig: tuple | None = None
        self._pub = ""
        self._seen = False

    @staticmethod
    def probe() -> str:
        return probe()

    def _stat(self) -> tuple | None:
        try:
            st = self.key_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def facts(self, create: bool = True) -> dict[str, str]:
        out = {"ifname": self.name}
        if not create:
            return out
        self.impl = self.impl or probe()
        sig = self._stat()
        if sig is None or sig != self._sig:
            self._pub = ensure_key(self.key_path)
            self._sig = self._stat()
        return {**out, "impl": self.impl, "key_file": str(self.key_path), "public_key": self._pub,
                "log": self.wg_log if self.impl == "wireguard-go" else ""}

    def tick(self) -> bool:
        """True when the agent should reconcile now: the key changed, or the interface is gone."""
        if self.rotate_every and self._sig is not None:
            try:
                age = time.time() - self.key_path.stat().st_mtime
            except FileNotFoundError:
                age = 0
            if age >= self.rotate_every:
                self.log(f"wireguard: key older than {self.rotate_every} s; rotating")
                write_key(self.key_path)
        if self._sig is not None and self._stat() != self._sig:
            return True
        up = exists(self.name)
        if self._seen and not up:
            self.log(f"wireguard: interface {self.name} is gone"
                     + (" (wireguard-go died?)" if self.impl == "wireguard-go" else "") + "; restoring it")
            self._seen = False
            return True
        self._seen = self._seen or up
        return False

    def ensure(self, config: str) -> None:
        self._seen = exists(self.name)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ifname": self.name, "impl": self.impl, "public_key": self._pub,
                               "pid": find_pid(self.name) if self.impl == "wireguard-go" else 0}
        try:
            shown = show(self.name)
        except (Unavailable, Invalid, Unsupported):
            shown = None
        out["up"] = shown is not None
        if shown is not None:
            out["listen_port"] = shown.port
            hs = {k: (t, rx, tx) for k, t, rx, tx in shown.handshakes}
            out["peers"] = [{"public_key": p.public_key, "endpoint": p.endpoint, "allowed_ips": list(p.allowed_ips),
                             "latest_handshake": hs.get(p.public_key, (0, 0, 0))[0],
                             "rx": hs.get(p.public_key, (0, 0, 0))[1], "tx": hs.get(p.public_key, (0, 0, 0))[2]}
                            for p in shown.peers]
        return out

    def stop(self) -> None:
        """On leave: the interface goes (with the backend's other objects); make sure no
        wireguard-go of ours is left. The key file stays: it is the host's identity."""
        delete(self.name)


def rotate_key(state_dir: Path) -> str:
    """A new key pair for this host; running agents notice the file within a second,
    load it and publish the new public key. Returns the new public key."""
    return write_key(Path(state_dir) / KEY_FILE)

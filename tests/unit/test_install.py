"""`muslin install --root T` / `muslin uninstall --root T` without root: what is written
(plugins that answer VERSION, native or Python entry, muslind.toml muslind reads, units
that pass `systemd-analyze verify`, a conflist, completion), that a second install changes
nothing, that nothing is overwritten that install did not write (refused before anything
is written), that a failure half-way leaves T as it was, and that uninstall leaves T
exactly as it was before (file by file), keeping a file changed since install."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MUSLIN = str(Path(sys.executable).parent / "muslin")
MUSLIND = str(Path(sys.executable).parent / "muslind")
NATIVE = Path(sys.prefix) / "lib" / "muslin-fwd"


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: (kind, mode, sha256 or link target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            out[str(p.relative_to(root))] = ("link", os.readlink(p))
        elif p.is_dir():
            out[str(p.relative_to(root))] = ("dir", st.st_mode & 0o7777)
        else:
            out[str(p.relative_to(root))] = ("file", st.st_mode & 0o7777, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def muslin(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([MUSLIN, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def root(tmp_path):
    """A root that already holds someone else's plugin and network (install must not touch them)."""
    r = tmp_path / "root"
    (r / "opt/cni/bin").mkdir(parents=True)
    (r / "opt/cni/bin/bridge").write_text("#!/bin/sh\n")
    (r / "opt/cni/bin/bridge").chmod(0o755)
    (r / "etc/cni/net.d").mkdir(parents=True)
    (r / "etc/cni/net.d/other.conflist").write_text("{}\n")
    return r


def version_of(plugin: Path) -> dict:
    r = subprocess.run([str(plugin)], input='{"cniVersion": "1.0.0"}', capture_output=True, text=True, timeout=30,
                       env={"CNI_COMMAND": "VERSION", "PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_install_then_uninstall_leaves_the_root_as_it_was(root, tmp_path):
    before = snapshot(root)
    state = tmp_path / "state"
    r = muslin("install", "--root", str(root), "--cni-network", "web", "--subnet", "10.88.0.0/24",
               "--subnet", "fd00:88::/64", "--state-dir", str(state), "--agent-socket", str(tmp_path / "a.sock"),
               "--set", "docker-socket=", "--set", "reconcile-interval=0", "--completion", "bash,zsh,fish")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "note: muslin-cni and muslin-ipam: the " in r.stdout
    for plugin in ("muslin-cni", "muslin-ipam"):
        p = root / "opt/cni/bin" / plugin
        assert p.stat().st_mode & 0o777 == 0o755
        assert "1.0.0" in version_of(p)["supportedVersions"]
        if NATIVE.exists():
            assert p.read_bytes() == NATIVE.read_bytes()
    conf = json.loads((root / "etc/cni/net.d/web.conflist").read_text())
    plugin = conf["plugins"][0]
    assert conf["name"] == "web" and plugin["type"] == "muslin-cni" and plugin["dataDir"] == str(state)
    assert plugin["agentSocket"] == str(tmp_path / "a.sock")
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd00:88::/64"}]]
    sock = (root / "etc/systemd/system/muslind.socket").read_text()
    assert f"ListenStream={tmp_path / 'a.sock'}" in sock
    svc = (root / "etc/systemd/system/muslind.service").read_text()
    assert "Type=notify" in svc and f"ExecStart={MUSLIND} --config /etc/muslin/muslind.toml" in svc
    for f in ("etc/bash_completion.d/muslin", "usr/local/share/zsh/site-functions/_muslin",
              "etc/fish/completions/muslin.fish"):
        assert "_MUSLIN_COMPLETE" in (root / f).read_text()
    assert (root / "opt/cni/bin/bridge").read_text() == "#!/bin/sh\n"

    # muslind reads the installed config: its socket, no Docker socket
    p = subprocess.Popen([MUSLIND, "--config", str(root / "etc/muslin/muslind.toml")], stderr=subprocess.PIPE,
                         text=True, env={k: v for k, v in os.environ.items() if not k.startswith("MUSLIN_")})
    try:
        import time
        end = time.monotonic() + 20
        while not (tmp_path / "a.sock").exists():
            assert p.poll() is None and time.monotonic() < end, p.stderr.read()
            time.sleep(0.05)
        from muslin.control.systemd import probe_agent
        probe_agent(str(tmp_path / "a.sock"))
    finally:
        p.terminate()
        p.wait(15)

    # a second install with the same options writes nothing
    again = muslin("install", "--root", str(root), "--cni-network", "web", "--subnet", "10.88.0.0/24",
                   "--subnet", "fd00:88::/64", "--state-dir", str(state), "--agent-socket", str(tmp_path / "a.sock"),
                   "--set", "docker-socket=", "--set", "reconcile-interval=0", "--completion", "bash,zsh,fish")
    assert again.returncode == 0 and "wrote" not in again.stdout, again.stdout

    r = muslin("uninstall", "--root", str(root))
    assert r.returncode == 0 and r.stdout.count("removed ") == 9, r.stdout
    assert snapshot(root) == before
    r = muslin("uninstall", "--root", str(root))
    assert (r.returncode, r.stdout) == (0, f"nothing installed under {root}\n")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (systemd)")
def test_the_units_pass_systemd_analyze_verify(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert muslin("install", "--root", str(root), "--completion", "").returncode == 0
    units = root / "etc/systemd/system"
    r = subprocess.run(["systemd-analyze", "verify", str(units / "muslind.service"), str(units / "muslind.socket")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "muslind" not in r.stderr, r.stderr
    # and it would catch a broken one: a unit whose ExecStart does not exist fails
    bad = tmp_path / "bad" / "muslind.service"
    bad.parent.mkdir()
    bad.write_text((units / "muslind.service").read_text().replace(MUSLIND, "/nonexistent/muslind"))
    shutil.copy(units / "muslind.socket", bad.parent / "muslind.socket")
    r = subprocess.run(["systemd-analyze", "verify", str(bad), str(bad.parent / "muslind.socket")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "/nonexistent/muslind" in r.stderr


def test_nothing_is_overwritten_that_install_did_not_write(root):
    before = snapshot(root)
    r = muslin("install", "--root", str(root), "--cni-network", "other", "--subnet", "10.89.0.0/24")
    assert r.returncode == 4 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr == (f"error: {root}/etc/cni/net.d/other.conflist exists and was not written by muslin install "
                        "(nothing was changed; remove it, or choose another directory)\n")
    assert snapshot(root) == before
    r = muslin("install", "--root", str(root), "--cni-network", "web")
    assert (r.returncode, r.stderr) == (2, "error: --cni-network web needs --subnet CIDR (repeat for dual stack)\n")
    r = muslin("install", "--root", str(root), "--set", "resync=soon")
    assert (r.returncode, r.stderr) == (2, "error: --set: resync: 'soon' is not a number\n")
    r = muslin("install", "--root", str(root), "--cluster-network", "net0")
    assert r.returncode == 2 and "needs the cluster store" in r.stderr
    assert snapshot(root) == before


def test_a_failure_half_way_leaves_the_root_as_it_was(root):
    before = snapshot(root)
    r = muslin("install", "--root", str(root), env={"MUSLIN_FAILPOINTS": "install /etc/systemd/system/muslind.service"})
    assert r.returncode == 7 and "injected failure" in r.stderr
    assert snapshot(root) == before


def test_a_file_changed_since_install_is_kept_by_uninstall(root):
    before = snapshot(root)
    assert muslin("install", "--root", str(root), "--completion", "").returncode == 0
    conf = root / "etc/muslin/muslind.toml"
    conf.write_text(conf.read_text() + 'log-level = "debug"\n')
    r = muslin("install", "--root", str(root), "--completion", "")
    assert r.returncode == 4 and "was changed since muslin install wrote it" in r.stderr
    r = muslin("uninstall", "--root", str(root))
    assert r.returncode == 0 and f"kept {conf}: changed since muslin install wrote it" in r.stderr
    assert conf.exists() and not (root / "etc/systemd/system/muslind.service").exists()
    r = muslin("uninstall", "--root", str(root), "--force")
    assert r.returncode == 0 and f"removed {conf}" in r.stdout
    assert snapshot(root) == before


def test_the_python_entry_where_no_native_forwarder_exists(root, tmp_path):
    r = muslin("install", "--root", str(root), "--native", str(tmp_path / "none"), "--completion", "",
               "--cluster-network", "net0", "--set", "cluster-store=etcds://10.0.0.1:2379,10.0.0.2:2379",
               "--set", "etcd-ca=/etc/muslin/etcd-ca.pem")
    assert r.returncode == 0, r.stderr
    assert f"the Python entry: no native forwarder at {tmp_path / 'none'}" in r.stdout
    p = root / "opt/cni/bin/muslin-cni"
    assert p.read_text().startswith(f"#!{sys.executable}\n")
    assert "1.0.0" in version_of(p)["supportedVersions"]
    conf = json.loads((root / "etc/cni/net.d/net0.conflist").read_text())
    assert conf["plugins"][0]["network"] == "net0"
    import tomllib
    doc = tomllib.loads((root / "etc/muslin/muslind.toml").read_text())
    assert doc == {"state-dir": "/var/lib/muslin", "cluster-network": "net0",
                   "cluster-store": "etcds://10.0.0.1:2379,10.0.0.2:2379", "etcd-ca": "/etc/muslin/etcd-ca.pem"}


def test_debian_layout(tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    r = muslin("install", "--root", str(root), "--layout", "debian", "--muslind", "/usr/sbin/muslind")
    assert r.returncode == 0, r.stderr
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["etc/muslin/install-manifest.json", "etc/muslin/muslind.toml", "lib/systemd/system/muslind.service",
                     "lib/systemd/system/muslind.socket", "usr/lib/cni/muslin-cni", "usr/lib/cni/muslin-ipam",
                     "usr/share/bash-completion/completions/muslin", "usr/share/fish/vendor_completions.d/muslin.fish",
                     "usr/share/zsh/vendor-completions/_muslin"]
    assert "ExecStart=/usr/sbin/muslind --config" in (root / "lib/systemd/system/muslind.service").read_text()


def test_completion_scripts_complete_networks_and_sandboxes_from_the_store(tmp_path):
    """Real bash sourcing `muslin completion bash` completes names from the state dir's store."""
    from muslin.model.types import Network
    from muslin.store import open_store

    st = open_store(str(tmp_path))
    st.put("networks/web", Network(name="web").to_dict())
    st.put("networks/db", Network(name="db").to_dict())
    st.put("sandboxes/sb1", {"name": "sb1", "netns": "/run/netns/sb1"})
    st.close()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MUSLIN_STATE_DIR", None)

    def complete(*words: str) -> list[str]:
        arr = " ".join(f"'{w}'" for w in ("muslin", "--state-dir", str(tmp_path), *words))
        r = subprocess.run(["bash", "-c", f'source <(muslin completion bash); COMP_WORDS=({arr}); '
                                          f'COMP_CWORD={len(words) + 2}; _muslin_completion muslin; '
                                          'printf "%s\\n" "${COMPREPLY[@]}"'],
                           capture_output=True, text=True, timeout=30, env=env)
        assert r.returncode == 0, r.stderr
        return sorted(x for x in r.stdout.splitlines() if x)

    assert complete("network", "inspect", "") == ["db", "web"]
    assert complete("network", "rm", "w") == ["web"]
    assert complete("connect", "web", "") == ["sb1"]
    assert complete("sandbox", "exec", "") == ["sb1"]
    assert complete("cl") == ["cluster"]
    for shell in ("zsh", "fish"):
        r = muslin("completion", shell)
        assert r.returncode == 0 and "_MUSLIN_COMPLETE" in r.stdout
    assert muslin("completion", "tcsh").returncode == 2

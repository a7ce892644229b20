"""The lab's bytecode cache (lab/bytecode.py): only when this environment writes no .pyc,
then in the given dir only (nothing in the source tree), filled by one process."""

from __future__ import annotations

import os
import subprocess
import sys

from muslin.lab import bytecode


def test_no_cache_when_python_writes_its_own(tmp_path):
    assert bytecode.env(tmp_path / "c", dont_write=False) is None


def test_the_cache_is_the_labs_own_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    e = bytecode.env(tmp_path / "c", dont_write=True)
    assert e is not None and "PYTHONDONTWRITEBYTECODE" not in e and e["PYTHONPYCACHEPREFIX"] == str(tmp_path / "c")
    assert e["PATH"] == os.environ["PATH"]  # the rest is inherited


def test_warming_fills_the_cache_and_a_child_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    cache = tmp_path / "c"
    bytecode.finish_warming(bytecode.start_warming(cache))
    import muslin
    src = os.path.dirname(muslin.__file__)
    pycs = list(cache.rglob("*.pyc"))
    assert any("muslin" in str(p) and "daemon" in p.name for p in pycs)
    assert any(str(p).startswith(str(cache) + src) for p in pycs)  # a mirror of the tree, in the cache
    r = subprocess.run([sys.executable, "-c", "import muslin.control.daemon, sys; print(sys.pycache_prefix)"],
                       env=bytecode.env(cache), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == str(cache)

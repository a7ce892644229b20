"""The import rule: the pure core imports no kernel, store or front-end code."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "muslin"
PURE = ["model", "ipam", "firewall", "plan"]
PURE_FILES = ["cni/types.py", "cni/result.py", "docker/types.py"]
FORBIDDEN = ("muslin.dataplane", "muslin.store", "muslin.control", "muslin.cli", "muslin.docker.server",
             "muslin.lab", "pyroute2", "subprocess", "sqlite3", "etcd3gw", "socket")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def pure_files() -> list[Path]:
    files = [p for d in PURE for p in (SRC / d).rglob("*.py")]
    return files + [SRC / f for f in PURE_FILES if (SRC / f).exists()]


def test_pure_core_imports_no_io():
    bad = {}
    for f in pure_files():
        hits = [m for m in imports_of(f) if m.startswith(FORBIDDEN)]
        if hits:
            bad[str(f.relative_to(SRC))] = hits
    assert not bad, f"pure modules import I/O code: {bad}"


def test_cni_entry_imports_only_the_standard_library():
    import sys

    entry = SRC / "cni" / "entry.py"
    top = [n for n in ast.parse(entry.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    for node in top:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            root = name.split(".")[0]
            assert root == "__future__" or root in sys.stdlib_module_names, f"cni/entry.py imports {name} at top level"

"""The import rules, for every package: the pure core imports no kernel, store or front-end
code; the dataplane knows neither backends nor the control layer; the control layer knows no
front-end (but for muslind's composition root); front-ends never reach into the dataplane.
Imports under `if TYPE_CHECKING:` are typing only and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "muslin"
IO_LIBS = ("pyroute2", "subprocess", "sqlite3", "etcd3gw", "socket", "_socket", "fcntl", "ctypes")
FRONT_ENDS = ("muslin.cli", "muslin.cni", "muslin.docker", "muslin.lab")
PURE = ("muslin.dataplane", "muslin.store", "muslin.control", "muslin.backends") + FRONT_ENDS + IO_LIBS

# (files, what they must not import, files exempt)
RULES = [
    (["model", "ipam", "firewall", "plan", "drivers", "dataplane/api.py", "cni/types.py", "cni/result.py",
      "docker/types.py", "docker/options.py", "docker/clusterpool.py", "dns/records.py", "dns/wire.py", "dns/answer.py"], PURE, []),
    (["dataplane"], ("muslin.backends", "muslin.control", "muslin.drivers", "muslin.store") + FRONT_ENDS, []),
    (["backends"], ("muslin.dataplane", "muslin.control", "muslin.store") + FRONT_ENDS + IO_LIBS, []),
    (["store"], ("muslin.dataplane", "muslin.control", "muslin.drivers", "muslin.backends") + FRONT_ENDS, []),
    # muslind hosts the front-ends: daemon.py is the one place that wires them to the use-cases
    (["control"], FRONT_ENDS, ["control/daemon.py", "control/agent_cli.py"]),
    (["lab"], ("muslin.cni", "muslin.docker", "muslin.drivers"), []),
    # the DNS server knows sockets and its own table, nothing of the stores or the kernel
    (["dns"], ("muslin.dataplane", "muslin.store", "muslin.control", "muslin.backends", "muslin.drivers",
               "pyroute2") + FRONT_ENDS, []),
    (["cli", "cni", "docker"], ("muslin.dataplane", "muslin.drivers.bridge", "muslin.drivers.macvlan",
                               "muslin.store", "pyroute2"), ["cni/entry.py"]),
]


def runtime_imports(path: Path) -> set[str]:
    """Modules imported at run time (imports inside `if TYPE_CHECKING:` are left out)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def files(where: list[str]) -> list[Path]:
    out: list[Path] = []
    for w in where:
        p = SRC / w
        out += [p] if p.suffix == ".py" else sorted(p.rglob("*.py"))
    return out


@pytest.mark.parametrize("where, forbidden, exempt", RULES, ids=[",".join(r[0][:3]) for r in RULES])
def test_import_rule(where, forbidden, exempt):
    bad = {}
    for f in files(where):
        rel = str(f.relative_to(SRC))
        if rel in exempt:
            continue
        own = "muslin." + rel.split("/")[0]
        hits = sorted(m for m in runtime_imports(f) if m.startswith(forbidden) and not m.startswith(own + "."))
        if hits:
            bad[rel] = hits
    assert not bad, f"imports breaking the rule: {bad}"


def test_every_package_has_a_rule():
    covered = {w.split("/")[0] for where, _, _ in RULES for w in where}
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= covered, f"packages without an import rule: {sorted(packages - covered)}"


def test_cni_entry_imports_only_the_standard_library():
    import sys

    entry = SRC / "cni" / "entry.py"
    top = [n for n in ast.parse(entry.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    for node in top:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            root = name.split(".")[0]
            assert root == "__future__" or root in sys.stdlib_module_names, f"cni/entry.py imports {name} at top level"

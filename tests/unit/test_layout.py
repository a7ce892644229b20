"""The test tree's own rule: pytest collects tests/unit, tests/kernel and tests/clients as one
package (rootdir conftest, no __init__.py), so two test files with one basename break the
collection of the whole suite."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_test_file_basenames_are_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1], sorted(n for n, c in names.items() if c > 1)

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from nsutil import NetnsFactory  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (network namespaces)")
        for item in items:
            if "kernel" in item.keywords or "client" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def netns():
    """Factory of throwaway namespaces: netns('host') -> Netns. All removed at teardown."""
    f = NetnsFactory()
    try:
        yield f
    finally:
        f.cleanup()


@pytest.fixture
def state_dir(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    return d

"""The plugin entry answers VERSION itself (no handler import, no agent): it must say
exactly what the handler says."""

from __future__ import annotations

import pytest

from muslin.cni import entry, handler
from muslin.cni.types import SUPPORTED_VERSIONS


def test_versions_match_types():
    assert entry.VERSIONS == SUPPORTED_VERSIONS


@pytest.mark.parametrize("stdin", [b"", b"{}", b'{"cniVersion": "0.3.1"}', b'{"cniVersion": "1.0.0", "name": "x"}',
                                   b'{"cniVersion": "9.9.9"}', b'{"cniVersion": 1}', b"[1]", b"not json", b"\xff\xfe"])
def test_version_answer_same_as_handler(stdin):
    env = {"CNI_COMMAND": "VERSION"}
    assert entry._version(stdin) == handler.handle(env, stdin)
    assert entry._version(stdin) == handler.handle_ipam(env, stdin)

"""muslind's logging: --log-level debug shows Muslin's debug lines, not pyroute2's netlink
dumps, even though pyroute2 resets its logger's level when it is imported (issue 8, bug 10)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Runs the real muslind main() (settings parsed by cli/muslind.py, logs set up by cli/logs.py)
# with one probe service that imports pyroute2 *after* main set up
# logging (as muslind's services do lazily), logs like pyroute2 and like Muslin, and stops.
PROBE = textwrap.dedent("""
    import logging, sys
    from muslin.control import daemon
    if sys.argv[1] == "before":
        import pyroute2  # imported before main(): must make no difference either
    class Probe:
        name = "probe"
        def __init__(self, ctx): self.ctx = ctx
        def start(self):
            import pyroute2
            logging.getLogger("pyroute2.netlink.core").debug("PYROUTE2-DEBUG dump")
            logging.getLogger("pyroute2").warning("PYROUTE2-WARNING kept")
            logging.getLogger("asyncio").debug("ASYNCIO-DEBUG")
            logging.getLogger("muslin.docker.driver").debug("MUSLIN-DEBUG")
            logging.getLogger("muslind").debug("MUSLIND-DEBUG")
            self.ctx.stop.set()
        def stop(self): pass
    daemon.service_factories = lambda ctx: [lambda: Probe(ctx)]
    daemon.main(["--config", "", "--log-level", "debug", "--docker-socket", "", "--agent-socket", ""] + sys.argv[2:])
""")


def run(*args: str) -> str:
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stderr


@pytest.mark.parametrize("when", ["after", "before"])
def test_debug_level_keeps_pyroute2_at_warning(when):
    err = run(when)
    assert "MUSLIN-DEBUG" in err and "MUSLIND-DEBUG" in err
    assert "PYROUTE2-WARNING kept" in err
    assert "PYROUTE2-DEBUG" not in err and "ASYNCIO-DEBUG" not in err, err


def test_third_party_level_when_asked():
    err = run("after", "--third-party-log-level", "debug")
    assert "PYROUTE2-DEBUG" in err and "MUSLIN-DEBUG" in err


def test_info_level_hides_muslin_debug():
    err = run("after", "--log-level", "info")
    assert "MUSLIN-DEBUG" not in err and "PYROUTE2-DEBUG" not in err and "PYROUTE2-WARNING kept" in err

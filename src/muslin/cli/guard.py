"""One line on error, never a traceback: the wrapper every click command of Muslin uses."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from muslin.model.errors import MuslinError


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print `error: <message>` and exit with the error kind's status (1 for anything else)."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            sys.exit(130)
        except MuslinError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_status)
        except BaseException as e:  # noqa: BLE001 - one line, never a traceback
            click.echo(f"error: {type(e).__name__}: {e}", err=True)
            sys.exit(1)

    return wrapper

"""One line on error, never a traceback: the wrapper every click command of Muslin uses.

`run(cmd)` is the entry of every Muslin program (muslin, muslind, `python -m
muslin.control.agent`, `python -m muslin.lab`): usage errors are one line too, exit 2;
MuslinError exits with its kind's status (2 invalid, 3 not found, 4 conflict, 5
exhausted, 6 unsupported, 7 unavailable), anything else is `error: internal: ...` exit 70;
Ctrl-C 130. `version_option()` is the `--version` of each of them.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from muslin.model.errors import Invalid, MuslinError


def version() -> str:
    try:
        from importlib.metadata import version as v

        return v("muslin")
    except Exception:  # noqa: BLE001 - a checkout without metadata
        return "unknown"


def version_option() -> Callable[[Any], Any]:
    """--version (the package's metadata is read only when it is asked for)."""
    return click.version_option(None, "--version", package_name="muslin", message="%(prog)s %(version)s",
                                help="Print the version and exit.")


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


def usage_line(e: click.UsageError) -> str:
    msg = " ".join(e.format_message().split())
    msg = (msg[:1].lower() + msg[1:]).rstrip(".")
    where = e.ctx.command_path if e.ctx is not None else ""
    return f"error: {msg}" + (f" (see '{where} --help')" if where else "")


def run(cmd: click.Command, argv: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run a click command as a Muslin program and exit with its status."""
    try:
        rv = cmd.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:
        click.echo(usage_line(e), err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except MuslinError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `muslin network ls | head -1`: the reader went away
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as e:  # noqa: BLE001 - no traceback reaches a user
        click.echo(f"error: internal: {type(e).__name__}: {e}", err=True)
        sys.exit(70)
    sys.exit(rv if type(rv) is int else 0)


def key_values(pairs: tuple[str, ...], flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs of a repeatable option: true/false are booleans, digits integers,
    anything else text (Invalid, naming the flag, for a pair without '=')."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Invalid(f"{flag} {pair!r}: expected KEY=VALUE")
        low = value.lower()
        out[key] = True if low == "true" else False if low == "false" else int(value) if value.isdigit() else value
    return out

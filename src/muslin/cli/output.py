"""How Muslin's commands print: `-o table|json`, `-q` (names only) and `--format TEMPLATE`
(Python format fields over the JSON form of each item, e.g. `--format '{name} {driver}'`),
for every read command.

Tables go through rich on a terminal (columns fold, nothing is cut); when stdout is not a
terminal they are plain text, columns separated by two spaces, never truncated or wrapped,
so scripts and `grep` see whole values.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Sequence

import click

from muslin.model.errors import Invalid, MuslinError

OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
                      help="Output format.")


def list_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """-o/--output, -q/--quiet and --format for a command that lists items."""
    f = click.option("--format", "template", default="", metavar="TEMPLATE",
                     help="One line per item from Python format fields over its JSON form, e.g. '{name}'.")(f)
    f = click.option("-q", "--quiet", is_flag=True, help="Only the names, one per line.")(f)
    return OUTPUT(f)


def one_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """-o/--output and --format for a command that shows one item."""
    f = click.option("--format", "template", default="", metavar="TEMPLATE",
                     help="One line from Python format fields over the JSON form, e.g. '{driver}'.")(f)
    return OUTPUT(f)


def is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def fill(template: str, item: dict[str, Any]) -> str:
    try:
        return template.format_map(item)
    except KeyError as e:
        raise Invalid(f"--format: no field {e.args[0]!r} (fields: {', '.join(sorted(item))})") from None
    except (IndexError, ValueError, AttributeError, TypeError) as e:
        raise Invalid(f"--format {template!r}: {e}") from None


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    cells = [["" if c is None else str(c) for c in r] for r in rows]
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        t = Table(box=None, header_style="bold", title=title or None, title_justify="left")
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in cells:
            t.add_row(*r)
        Console().print(t)
        return
    if title:
        click.echo(title)
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    for r in [list(columns)] + cells:
        click.echo("  ".join([v.ljust(widths[i]) for i, v in enumerate(r[:-1])] + r[-1:]).rstrip())


def emit_list(items: list[dict[str, Any]], output: str, quiet: bool, template: str, columns: Sequence[str],
              row: Callable[[dict[str, Any]], Sequence[Any]], key: str = "name", title: str = "") -> None:
    if quiet:
        for it in items:
            click.echo(it[key])
    elif template:
        for it in items:
            click.echo(fill(template, it))
    elif output == "json":
        click.echo(json.dumps(items, indent=2, default=str))
    else:
        table(columns, [row(it) for it in items], title)


def emit_one(item: dict[str, Any], output: str, template: str, human: Callable[[], None]) -> None:
    if template:
        click.echo(fill(template, item))
    elif output == "json":
        click.echo(json.dumps(item, indent=2, default=str))
    else:
        human()


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """`key:  value` lines (a human view of one object), empty values left out."""
    pairs = [(k, v) for k, v in pairs if v not in (None, "", [], (), {})]
    w = max((len(k) for k, _ in pairs), default=0)
    for k, v in pairs:
        click.echo(f"{(k + ':').ljust(w + 1)}  {v}")


def each(names: Sequence[str], act: Callable[[str], Any]) -> None:
    """Do `act` for every name, printing each name done and one error line per failure; go on
    past a failure and exit with the first failure's status (`network rm A B C`)."""
    first: MuslinError | None = None
    for n in names:
        try:
            act(n)
            click.echo(n)
        except MuslinError as e:
            click.echo(f"error: {n}: {e}", err=True)
            first = first or e
    if first is not None:
        sys.exit(first.exit_status)

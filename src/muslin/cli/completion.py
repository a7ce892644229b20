"""Shell completion: `muslin completion bash|zsh|fish` prints the script (click's), and the
arguments naming a network or a sandbox complete from the store of the state dir in use
(--state-dir, else MUSLIN_STATE_DIR, else /var/lib/muslin); nothing is created, no
namespace entered, and any failure completes nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import click
from click.shell_completion import CompletionItem, get_completion_class

from muslin.control.settings import DEFAULT_STATE_DIR

SHELLS = ("bash", "zsh", "fish")


def script(shell: str) -> str:
    from muslin.cli.main import cli

    cls = get_completion_class(shell)
    if cls is None:
        raise click.BadParameter(f"{shell!r}: expected one of {', '.join(SHELLS)}")
    return cls(cli, {}, "muslin", "_MUSLIN_COMPLETE").source()


def _names(ctx: click.Context, get: Callable[[Any], list[str]]) -> list[str]:
    state = ctx.find_root().params.get("state_dir") or os.environ.get("MUSLIN_STATE_DIR") or DEFAULT_STATE_DIR
    if not (Path(state) / "muslin.db").is_file():
        return []
    try:
        from muslin.control.service import Muslin

        m = Muslin(state_dir=os.path.abspath(state))
        try:
            return get(m)
        finally:
            m.close()
    except Exception:  # noqa: BLE001 - completion never fails loudly
        return []


def networks(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    names = _names(ctx, lambda m: sorted(n.name for n in m.list_networks()))
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def sandboxes(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from muslin.control import sandboxes as sb

    return [CompletionItem(n) for n in _names(ctx, sb.sandbox_names) if n.startswith(incomplete)]


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash: eval "$(muslin completion bash)"   (or save it in /etc/bash_completion.d/muslin)
    zsh:  muslin completion zsh > "${fpath[1]}/_muslin"
    fish: muslin completion fish > ~/.config/fish/completions/muslin.fish
    """
    click.echo(script(shell), nl=False)

"""Where the command line writes: results to stdout, progress and errors to stderr, an error as one red line."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

# Piped output (logs, CI) gets a fixed comfortable width instead of Rich's 80 columns (COLUMNS is not read here:
# pytest-xdist sets it to 80 in its workers, and a shell rarely exports it).
stdout = Console(width=None if sys.stdout.isatty() else 140)
stderr = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Say what is wrong in one `error:` line on stderr and leave with exit code `code`, without a traceback."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def say(console: Console, text: str, style: str | None = None) -> None:
    """Print a line of plain text (paths, run and class names), never read as Rich markup: the one way commands
    print what they did, so that a path such as art/x[/]y is shown as it is and cannot fail a finished command."""
    console.print(f"[{style}]{escape(text)}[/]" if style else escape(text), highlight=False, soft_wrap=True)

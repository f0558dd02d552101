"""The terminal side of the Reporter: status lines and progress bars on a Rich console (stderr)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from kdcompress.core.reporter import Reporter

FIXED_WIDTH = 10 + 12 + 9 + 7 + 5  # progress columns before the status, and the spaces between them


class RichReporter(Reporter):
    """Status lines and progress bars on a (stderr) console."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def info(self, message: str) -> None:
        self.console.print(f"[cyan]•[/] {escape(message)}", highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        # Fixed widths for label, bar, count and time; the status takes what is left and is cut with an
        # ellipsis, so that at 80 columns the bar, the count and the elapsed time stay readable.
        columns = [
            TextColumn("[bold]{task.description}", table_column=Column(width=10, no_wrap=True, overflow="ellipsis")),
            BarColumn(bar_width=12, table_column=Column(min_width=12)),
            MofNCompleteColumn(table_column=Column(min_width=9, no_wrap=True)),
            TimeElapsedColumn(table_column=Column(min_width=7, no_wrap=True)),
            TextColumn("{task.fields[status]}", table_column=Column(max_width=max(10, self.console.width - FIXED_WIDTH), no_wrap=True, overflow="ellipsis")),
        ]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(escape(description), total=total, status="")

            def advance(step: int = 1, **fields: Any) -> None:
                bar.update(task, advance=step, **{k: escape(v) if isinstance(v, str) else v for k, v in fields.items()})

            yield advance

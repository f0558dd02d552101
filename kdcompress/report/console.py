"""The terminal side of the Reporter: status lines and progress bars on a Rich console (stderr)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

from kdcompress.core.reporter import Reporter

FIXED_WIDTH = 10 + 12 + 9 + 7 + 7 + 6  # progress columns before the status, and the spaces between them
PLAIN_EVERY = 60.0  # seconds between progress lines when stderr is not a terminal (a log, tee, CI)


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
        if not self.console.is_terminal:  # piped or logged: plain lines, at least one a minute, instead of a bar
            with self._plain(description, total) as advance:
                yield advance
            return
        # Fixed widths for label, bar, count and time; the status takes what is left and is cut with an
        # ellipsis, so that at 80 columns the bar, the count and the elapsed time stay readable.
        columns = [
            TextColumn("[bold]{task.description}", table_column=Column(width=10, no_wrap=True, overflow="ellipsis")),
            BarColumn(bar_width=12, table_column=Column(min_width=12)),
            MofNCompleteColumn(table_column=Column(min_width=9, no_wrap=True)),
            TimeElapsedColumn(table_column=Column(min_width=7, no_wrap=True)),
            TimeRemainingColumn(table_column=Column(min_width=7, no_wrap=True)),
            TextColumn("{task.fields[status]}", table_column=Column(max_width=max(10, self.console.width - FIXED_WIDTH), no_wrap=True, overflow="ellipsis")),
        ]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(escape(description), total=total, status="")

            def advance(step: int = 1, **fields: Any) -> None:
                bar.update(task, advance=step, **{k: escape(v) if isinstance(v, str) else v for k, v in fields.items()})

            yield advance

    @contextmanager
    def _plain(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        """Progress as plain lines: one at the start, then one at least every PLAIN_EVERY seconds, and one at the end,
        each with the count, the elapsed time and (with a total) an estimate of the time left."""
        import time

        started = last = time.monotonic()
        state = {"done": 0, "status": ""}

        def line(final: bool = False) -> None:
            elapsed = time.monotonic() - started
            count = f"{state['done']}/{total}" if total else str(state["done"])
            left = ""
            if total and state["done"] and not final:
                left = f", about {_minutes(elapsed / state['done'] * (total - state['done']))} left"
            status = f" ({state['status']})" if state["status"] else ""
            self.console.print(escape(f"{description}: {count} after {_minutes(elapsed)}{left}{status}"), highlight=False, soft_wrap=True)

        def advance(step: int = 1, **fields: Any) -> None:
            nonlocal last
            state["done"] += step
            if isinstance(fields.get("status"), str):
                state["status"] = fields["status"]
            if time.monotonic() - last >= PLAIN_EVERY:
                last = time.monotonic()
                line()

        line()
        yield advance
        line(final=True)


def _minutes(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"

"""What a person reads: Rich progress on stderr, and result tables built from a manifest."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kdcompress.reporting import Reporter

ROLE_LABELS = {"teacher": "teacher", "baseline": "baseline", "student": "distilled", "int8": "distilled int8"}


class RichReporter(Reporter):
    """Status lines and progress bars on a (stderr) console."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def info(self, message: str) -> None:
        self.console.print(f"[cyan]•[/] {message}", highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[bold yellow]warning:[/] {message}", highlight=False)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        columns = [
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
        ]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(description, total=total, status="")

            def advance(step: int = 1, **fields: Any) -> None:
                bar.update(task, advance=step, **fields)

            yield advance


def _points(delta: float) -> str:
    return f"{delta * 100:+.1f}"


def format_count(n: int) -> str:
    """12_345_678 -> '12.35 M'."""
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def _train_time(seconds: float | None, reused: bool) -> str:
    text = "—" if seconds is None else f"{seconds:.0f} s"
    return f"reused ({text})" if reused and seconds is not None else ("reused" if reused else text)


def summary_table(manifest: dict[str, Any]) -> Table:
    """Teacher / baseline / distilled side by side: accuracy, change vs baseline, size, training time."""
    models = manifest["models"]
    baseline = models["baseline"]
    n_test = manifest["dataset"]["counts"]["test"]
    table = Table(
        title=f"kdc compress: {manifest['run']} ({manifest['dataset']['name']}, {n_test} test images)",
        caption="Δ = change vs the baseline (same student trained without distillation), in points and test images",
    )
    table.add_column("model", no_wrap=True)
    table.add_column("arch", overflow="fold")
    table.add_column("test acc", justify="right", no_wrap=True)
    table.add_column("Δ acc", justify="right", no_wrap=True)
    table.add_column("Δ imgs", justify="right", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("MB", justify="right")
    table.add_column("best ep", justify="right")
    table.add_column("train", justify="right")
    for role in ("teacher", "baseline", "student"):
        entry = models[role]
        is_baseline = role == "baseline"
        delta_images = entry["test_correct"] - baseline["test_correct"]
        seconds, reused = entry.get("train_seconds"), entry.get("reused", False)
        table.add_row(
            ROLE_LABELS[role],
            entry["architecture"],
            f"{entry['test_accuracy']:.2%}",
            "—" if is_baseline else _points(entry["test_accuracy"] - baseline["test_accuracy"]),
            "—" if is_baseline else f"{delta_images:+d}",
            format_count(entry["parameters"]),
            f"{entry['onnx_bytes'] / 1e6:.2f}",
            str(entry.get("best_epoch", "—")),
            _train_time(seconds, reused),
        )
    return table

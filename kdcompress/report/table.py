"""The table widget every command prints (it fits the terminal without cutting a number), Markdown tables, and
matplotlib imported on first use."""
from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text


def format_count(n: int) -> str:
    """12_345_678 -> '12.35 M'."""
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


class FittedTable:
    """A table that fits the width it is printed at without cutting a number: when its columns' widest cells do not
    fit, the optional columns (named in `optional`, least needed first) are left out, and the text of the first column
    folds. `kdc benchmark --wide` (optional=()) keeps every column."""

    def __init__(self, title: str, headers: list[str], rows: list[list[Any]], caption: str | None = None,
                 optional: tuple[str, ...] = (), narrow: "FittedTable | None" = None) -> None:  # fmt: skip
        self.title, self.headers, self.rows, self.caption, self.optional = title, headers, rows, caption, optional
        self.narrow = narrow  # the shorter table shown instead where even the required columns do not fit

    def need(self, width: int) -> int:
        """Characters the columns shown at this width take at least."""
        return sum(self._need(i) + 3 for i in self.columns_for(width)) + 1

    def _need(self, index: int) -> int:
        cells = [str(row[index]) for row in self.rows]
        longest_word = max((len(w) for w in self.headers[index].split()), default=1)
        return max([longest_word, *(len(c) for c in cells)]) if index else max(longest_word, 12)

    def fitted(self, width: int) -> "FittedTable":
        """This table, or its narrow form where this one cannot fit the width."""
        return self.narrow.fitted(width) if self.narrow is not None and self.need(width) > width else self

    def columns_for(self, width: int) -> list[int]:
        """The indices of the columns shown at this width."""
        shown = list(range(len(self.headers)))
        for name in self.optional:
            if sum(self._need(i) + 3 for i in shown) + 1 <= width:
                break
            if name in self.headers:
                shown.remove(self.headers.index(name))
        return shown

    def table(self, width: int) -> Table:
        shown = self.columns_for(width)
        left_out = [self.headers[i] for i in range(len(self.headers)) if i not in shown]
        caption = self.caption
        if left_out:
            caption = ((caption + "\n") if caption else "") + f"(left out at {width} columns: {', '.join(left_out)}; --wide, or the JSON, has them)"
        table = Table(title=Text(self.title), caption=None if caption is None else Text(caption))
        for i in shown:
            first = i == 0
            table.add_column(Text(self.headers[i]), justify="left" if first else "right", no_wrap=not first,
                             overflow="fold" if first else "ellipsis",
                             min_width=None if first else max(len(str(r[i])) for r in self.rows) if self.rows else None)  # fmt: skip
        for row in self.rows:
            table.add_row(*(row[i] if isinstance(row[i], Text) else Text(str(row[i])) for i in shown))
        return table

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield self.fitted(options.max_width).table(options.max_width)


def build_table(
    title: str, headers: list[str], rows: list[list[Any]], caption: str | None = None, optional: tuple[str, ...] = ()
) -> FittedTable:
    """First column left-aligned (its text folds), the figures right-aligned and never cut; optional columns are left
    out where the terminal is too narrow for them all.

    Every string is shown as it is, never read as Rich markup: class names come from folder names, and
    `[link=...]` in one must not become a live hyperlink. Styled cells are passed as rich Text.
    """
    return FittedTable(title, headers, rows, caption, optional)


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table as lines: header, rule, one line per row."""
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported on first use.

    matplotlib keeps its font cache and config under HOME (~/.cache/matplotlib, ~/.config/matplotlib); unless the user
    points MPLCONFIGDIR somewhere, kdc gives it a temporary folder of its own, removed at exit, so that nothing is
    written under HOME (building the font cache there costs about 0.2 s a command)."""
    import os
    import sys

    if "matplotlib" not in sys.modules and not os.environ.get("MPLCONFIGDIR", "").strip():
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="kdc-matplotlib-")
        atexit.register(shutil.rmtree, folder, True)
        os.environ["MPLCONFIGDIR"] = folder
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

"""How the library tells the caller what it is doing, without printing: a reporter object."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator


class Reporter:
    """Receives status and progress from the library; this base class ignores everything."""

    def info(self, message: str) -> None:
        """A status line (which stage runs, what is reused)."""

    def warn(self, message: str) -> None:
        """Something the user should know about the results."""

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        """A progress bar; the yielded function takes (advance, **fields) to update it."""

        def advance(step: int = 1, **fields: Any) -> None:
            pass

        yield advance


NullReporter = Reporter

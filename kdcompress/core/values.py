"""Type checks for values read back from files kdc wrote (manifests, benchmark results, sweep runs): JSON gives
bools where ints were written, and NaN where numbers were."""

from __future__ import annotations

import math
from typing import Any


def is_whole(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_fraction(value: Any) -> bool:
    """A finite number in [0, 1] (an accuracy, an agreement)."""
    return is_number(value) and 0 <= value <= 1


def control_character(text: str) -> str | None:
    """The first control character or line/paragraph separator in text (None: plain). Names kdc reads back and
    prints (a class, a run) must have none: a newline in one would start a line of its own in a report."""
    import unicodedata

    return next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)

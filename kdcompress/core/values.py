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

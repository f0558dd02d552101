"""The accuracy / latency / size frontier of a run's models, and which file to ship under a budget.

Pure arithmetic on measured points (no onnxruntime here): `kdc benchmark` measures, this module judges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kdcompress.core.errors import KdcError


@dataclass(frozen=True)
class Point:
    """One (model, format) as measured on this machine."""

    name: str  # the role in the run: teacher, baseline, student, control, int8, fp16
    file: str
    accuracy: float  # on the test split, in [0, 1]
    p50_ms: float  # CPU latency at batch 1
    mb: float  # file size, 1e6 bytes
    source: str | None = None  # the FP32 model this format was made from (int8 and fp16: the student)
    baseline: str | None = None  # the model it must beat to count as a gain (its own baseline)


@dataclass(frozen=True)
class Budget:
    """What the shipped file may cost: latency at batch 1, file size, accuracy points below the teacher."""

    max_ms: float | None = None
    max_mb: float | None = None
    max_drop: float | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--max-ms", self.max_ms), ("--max-mb", self.max_mb), ("--max-drop", self.max_drop)):
            if value is not None and not math.isfinite(value):
                raise KdcError(f"{flag} must be a finite number, got {value:g}: leave the option out for no limit")
        for flag, value in (("--max-ms", self.max_ms), ("--max-mb", self.max_mb)):
            if value is not None and not value > 0:
                raise KdcError(f"{flag} must be above 0, got {value:g}")
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise KdcError(f"--max-drop must be between 0 and 100 accuracy points, got {self.max_drop:g}")

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.max_ms, self.max_mb, self.max_drop))

    def describe(self) -> str:
        parts = [f"<= {self.max_ms:g} ms"] if self.max_ms is not None else []
        parts += [f"<= {self.max_mb:g} MB"] if self.max_mb is not None else []
        parts += [f"<= {self.max_drop:g} points below the teacher"] if self.max_drop is not None else []
        return ", ".join(parts)

    def excess(self, point: Point, teacher: Point) -> list[float]:
        """How far the point is over each limit it breaks, as a share of that limit (drop: per point of limit, at least 1)."""
        over = []
        if self.max_ms is not None and point.p50_ms > self.max_ms:
            over.append(point.p50_ms / self.max_ms - 1)
        if self.max_mb is not None and point.mb > self.max_mb:
            over.append(point.mb / self.max_mb - 1)
        drop = drop_points(point, teacher)
        if self.max_drop is not None and drop > self.max_drop:
            over.append((drop - self.max_drop) / max(1.0, self.max_drop))
        return over


def drop_points(point: Point, teacher: Point) -> float:
    """Accuracy points the point lies below the teacher (negative: above it)."""
    return 100 * (teacher.accuracy - point.accuracy)


def pareto(points: list[Point], cost: str) -> set[str]:
    """Names of the points no other point beats: at least as accurate and as cheap (cost "p50_ms" or "mb"), one strictly."""

    def beaten(p: Point) -> bool:
        return any(
            q.accuracy >= p.accuracy and getattr(q, cost) <= getattr(p, cost)
            and (q.accuracy > p.accuracy or getattr(q, cost) < getattr(p, cost))
            for q in points
        )  # fmt: skip

    return {p.name for p in points if not beaten(p)}


def not_faster(points: list[Point]) -> dict[str, str]:
    """Formats that are no faster than the FP32 model they were made from, here: never the one to ship."""
    by_name = {p.name: p for p in points}
    slow = {}
    for p in points:
        source = by_name.get(p.source) if p.source else None
        if source is not None and p.p50_ms >= source.p50_ms:
            slow[p.name] = f"{p.file} is not faster than {source.file} on this machine ({p.p50_ms:.2f} against {source.p50_ms:.2f} ms)"
    return slow


def recommend(
    points: list[Point], teacher: str, budget: Budget, verdicts: dict[str, dict[str, Any]], where: str
) -> dict[str, Any]:
    """The file to ship under the budget: the most accurate point within every limit (ties: the faster, the smaller).

    The teacher itself is never chosen, nor a format no faster than its FP32 source, unless the budget limits size
    (--max-mb): a smaller file is then a fair answer even when it is slower, and is said to be. verdicts maps a
    point's name to its comparison with its own baseline (stats.compare's dict). where names the machine.
    Without a point that meets the budget, the closest one is named: fewest limits broken, then least over.
    """
    by_name = {p.name: p for p in points}
    top = by_name[teacher]
    slow = not_faster(points) if budget.max_mb is None else {}
    candidates = [p for p in points if p.name != teacher and p.name not in slow]
    meets = [p for p in candidates if not budget.excess(p, top)]
    if meets:
        chosen = max(meets, key=lambda p: (p.accuracy, -p.p50_ms, -p.mb))
        words = f"Ship {_describe(chosen, top, verdicts)}. Measured on {where}."
        slower = not_faster(points).get(chosen.name)
        if slower:  # allowed by a size budget only, and said
            words += f" It is chosen for its size: {slower}."
    elif candidates:
        chosen = min(candidates, key=lambda p: (len(budget.excess(p, top)), sum(budget.excess(p, top))))
        words = f"Nothing meets the budget ({budget.describe()}); the closest is {_describe(chosen, top, verdicts)}. Measured on {where}."
    else:
        chosen, words = None, f"Nothing to recommend: no model but the teacher is faster than its source here. Measured on {where}."
    return {
        "budget": {"max_ms": budget.max_ms, "max_mb": budget.max_mb, "max_drop_points": budget.max_drop},
        "meets": chosen is not None and bool(meets),
        "file": chosen.file if chosen else None,
        "model": chosen.name if chosen else None,
        "excluded_not_faster": slow,
        "words": words,
    }


def _describe(p: Point, teacher: Point, verdicts: dict[str, dict[str, Any]]) -> str:
    drop = drop_points(p, teacher)
    versus = "above" if drop < 0 else "below"
    speed = _ratio(teacher.p50_ms, p.p50_ms, "faster", "slower")
    size = _ratio(teacher.mb, p.mb, "smaller", "larger")
    text = (
        f"{p.file}: {p.p50_ms:.2f} ms at batch 1 ({speed} than the teacher), {p.mb:.1f} MB ({size}), "
        f"accuracy {p.accuracy:.1%} ({abs(drop):.1f} points {versus} the teacher"
    )
    verdict = verdicts.get(p.name)
    if verdict is not None:
        text += f"; vs its baseline {verdict['delta']:+.1f} points, {_noise(verdict['verdict'])}"
    elif p.name == p.baseline or p.baseline is None:
        text += "; it is the baseline itself"
    return text + ")"


def _ratio(teacher: float, mine: float, better: str, worse: str) -> str:
    """'3.10x faster' when mine is the smaller cost, '1.25x slower' when it is the larger one."""
    return f"{teacher / mine:.2f}x {better}" if mine <= teacher else f"{mine / teacher:.2f}x {worse}"


def _noise(verdict: str) -> str:
    return {"better": "better beyond noise", "worse": "worse beyond noise"}.get(verdict, "within noise")

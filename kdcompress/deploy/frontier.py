"""The accuracy / latency / size frontier of a run's models, and which file to ship under a budget.

Pure arithmetic on measured points (no onnxruntime here): `kdc benchmark` measures, this module judges.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kdcompress.core.errors import KdcError


@dataclass(frozen=True)
class Point:
    """One (file, target, precision) as measured on this machine."""

    name: str  # the point's key (results.point_key), or the role where points are one per model
    file: str
    accuracy: float  # on the test split, in [0, 1]
    p50_ms: float  # latency at batch 1 on its target
    mb: float  # file size, 1e6 bytes
    source: str | None = None  # the point of the FP32 file this format was made from, on the same target
    baseline: str | None = None  # the point it must beat to count as a gain (its own baseline's reference point)
    role: str | None = None  # the model of the run (default: name)
    target: str = "onnxruntime-cpu"
    precision: str = "native"
    correct: Any = field(default=None, compare=False, repr=False)  # which test images it gets right (the noise rule)
    sensitivity: float | None = None  # two classes: recall of class 1 (e.g. PNEUMONIA)
    specificity: float | None = None  # two classes: recall of class 0
    ram_mb: float | None = None  # the peak resident memory it adds (deploy.footprint); None: not measured

    @property
    def model(self) -> str:
        return self.role or self.name


@dataclass(frozen=True)
class Budget:
    """What the shipped file may cost: latency at batch 1, file size, accuracy points below the teacher."""

    max_ms: float | None = None
    max_mb: float | None = None
    max_drop: float | None = None
    max_ram: float | None = None  # MB of resident memory the point adds (deploy.footprint)

    def __post_init__(self) -> None:
        limits = (("--max-ms", self.max_ms), ("--max-mb", self.max_mb), ("--max-drop", self.max_drop), ("--max-ram", self.max_ram))
        for flag, value in limits:
            if value is not None and not math.isfinite(value):
                raise KdcError(f"{flag} must be a finite number, got {value:g}: leave the option out for no limit")
        for flag, value in (("--max-ms", self.max_ms), ("--max-mb", self.max_mb), ("--max-ram", self.max_ram)):
            if value is not None and not value > 0:
                raise KdcError(f"{flag} must be above 0, got {value:g}")
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise KdcError(f"--max-drop must be between 0 and 100 accuracy points, got {self.max_drop:g}")

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.max_ms, self.max_mb, self.max_drop, self.max_ram))

    def describe(self) -> str:
        parts = [f"<= {self.max_ms:g} ms"] if self.max_ms is not None else []
        parts += [f"<= {self.max_mb:g} MB"] if self.max_mb is not None else []
        parts += [f"<= {self.max_drop:g} points below the teacher"] if self.max_drop is not None else []
        parts += [f"<= {self.max_ram:g} MB of RAM"] if self.max_ram is not None else []
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
        if self.max_ram is not None and (point.ram_mb is None or point.ram_mb > self.max_ram):  # unmeasured: not within it
            over.append(1.0 if point.ram_mb is None else point.ram_mb / self.max_ram - 1)
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
    """Formats no faster than the FP32 file they were made from, on the same target: not shipped for speed."""
    by_name = {p.name: p for p in points}
    slow = {}
    for p in points:
        source = by_name.get(p.source) if p.source else None
        if source is not None and p.p50_ms >= source.p50_ms:
            on = "" if p.target == "onnxruntime-cpu" and p.precision == "native" else f" on {p.target} {p.precision}"
            slow[p.name] = f"{p.file} is not faster than {source.file}{on} on this machine ({p.p50_ms:.2f} against {source.p50_ms:.2f} ms)"
    return slow


def recommend(points: list[Point], teacher: str, budget: Budget, where: str) -> dict[str, Any]:
    """The point to ship under the budget, noise-aware.

    Among the points within every limit, those no other point within the limits beats beyond noise (the paired rule
    of the verdicts, on their test predictions) count as tied with the most accurate; of the tied, the fastest is
    named, then the smallest. So a file better beyond noise is never passed over for a faster one, and a file one
    test image less accurate but twice as fast is not passed over for the more accurate one. The teacher's points are
    never chosen, nor a format no faster than its FP32 source on the same target, unless the budget limits size
    (--max-mb): a smaller file is then a fair answer even when slower, and is said to be. Without a point that meets
    the budget, the closest one is named: fewest limits broken, then least over. where names the machine.
    """
    by_name = {p.name: p for p in points}
    teacher_points = [p for p in points if p.model == teacher]
    top = next((p for p in teacher_points if p.target == "onnxruntime-cpu"), teacher_points[0])
    slow = not_faster(points) if budget.max_mb is None else {}
    candidates = [p for p in points if p.model != teacher and p.name not in slow]
    meets = [p for p in candidates if not budget.excess(p, top)]
    tied: list[Point] = []
    if meets:
        chosen, tied = _tie_break(meets)
        words = f"Within the budget ({budget.describe()}): ship {_describe(chosen, _twin(chosen, teacher_points, top), top, by_name, where)}"
        if len(tied) > 1:
            words += f" {len(tied)} points within the budget tied within noise of the most accurate; this is the fastest of them."
        slower = not_faster(points).get(chosen.name)
        if slower:  # allowed by a size budget only, and said
            words += f" It is chosen for its size: {slower}."
    elif candidates:
        chosen = min(candidates, key=lambda p: (len(budget.excess(p, top)), sum(budget.excess(p, top))))
        words = f"Nothing meets the budget ({budget.describe()}); the closest is {_describe(chosen, _twin(chosen, teacher_points, top), top, by_name, where)}"
    else:
        chosen, words = None, f"Nothing to recommend: no model but the teacher is faster than its source here. Measured on {where}."
    return {
        "budget": {"max_ms": budget.max_ms, "max_mb": budget.max_mb, "max_drop_points": budget.max_drop, "max_ram_mb": budget.max_ram},
        "meets": chosen is not None and bool(meets),
        "point": chosen.name if chosen else None,
        "file": chosen.file if chosen else None,
        "model": chosen.model if chosen else None,
        "target": chosen.target if chosen else None,
        "precision": chosen.precision if chosen else None,
        "tied": [p.name for p in tied],
        "excluded_not_faster": slow,
        "words": words,
    }


def _tie_break(meets: list[Point]) -> tuple[Point, list[Point]]:
    """The fastest (then smallest) point that no point of meets beats beyond noise, and the points tied with it."""
    from kdcompress.core.stats import compare

    cache: dict[tuple[str, str], bool] = {}

    def beats(a: Point, b: Point) -> bool:  # a better than b beyond noise, on their own predictions
        if a.accuracy <= b.accuracy or a.correct is None or b.correct is None:
            return False
        if (a.name, b.name) not in cache:
            import numpy as np

            cache[(a.name, b.name)] = compare(np.atleast_2d(a.correct), np.atleast_2d(b.correct)).verdict == "better"
        return cache[(a.name, b.name)]

    best = max(meets, key=lambda p: (p.accuracy, -p.p50_ms, -p.mb))
    tied = [p for p in meets if not beats(best, p)]
    for chosen in sorted(tied, key=lambda p: (p.p50_ms, p.mb)):
        if not any(beats(q, chosen) for q in meets):
            return chosen, tied
    return best, tied


def _twin(p: Point, teacher_points: list[Point], top: Point) -> Point:
    """The teacher on the same target and precision as p (its onnxruntime-cpu point where it has none)."""
    return next((t for t in teacher_points if t.target == p.target and t.precision == p.precision), top)


def _describe(p: Point, twin: Point, top: Point, by_name: dict[str, Point], where: str) -> str:
    drop = drop_points(p, top)
    versus = "above" if drop < 0 else "below"
    speed = _ratio(twin.p50_ms, p.p50_ms, "faster", "slower")
    size = _ratio(top.mb, p.mb, "smaller", "larger")
    on = f"{p.target} at {p.precision} precision" if p.precision != "native" else f"{p.target}, in the file's own precision"
    text = (
        f"{p.file} on {on}: {p.p50_ms:.2f} ms at batch 1 ({speed} than the teacher there), {p.mb:.1f} MB ({size}), "
        f"accuracy {p.accuracy:.1%} ({abs(drop):.1f} points {versus} the teacher"
    )
    if p.sensitivity is not None and p.specificity is not None:
        text += f"; sensitivity {p.sensitivity:.1%}, specificity {p.specificity:.1%}"
    baseline = by_name.get(p.baseline) if p.baseline else None
    if baseline is not None and baseline.correct is not None and p.correct is not None:
        import numpy as np

        from kdcompress.core.stats import compare

        verdict = compare(np.atleast_2d(p.correct), np.atleast_2d(baseline.correct)).to_dict()
        text += f"; vs its baseline {verdict['delta']:+.1f} points, {_noise(verdict['verdict'])}"
    elif p.baseline is None and p.source is not None:
        text += "; it is the teacher itself, in another format: no training"
    elif p.baseline is None:
        text += "; it is the baseline itself"
    ram = f" It adds {p.ram_mb:.0f} MB of resident memory when loaded." if p.ram_mb is not None else ""
    return text + f"). Measured on {where}.{ram}"


def _ratio(teacher: float, mine: float, better: str, worse: str) -> str:
    """'3.10x faster' when mine is the smaller cost, '1.25x slower' when it is the larger one."""
    return f"{teacher / mine:.2f}x {better}" if mine <= teacher else f"{mine / teacher:.2f}x {worse}"


def _noise(verdict: str) -> str:
    return {"better": "better beyond noise", "worse": "worse beyond noise"}.get(verdict, "within noise")


@dataclass(frozen=True)
class Int8Verdict:
    """Whether an INT8 file is faster than the FP32 one it was made from, here: in kdc quantize's record of it
    (manifest.json) and in benchmark.json's int8_verdicts."""

    faster: bool  # at batch 1 and at throughput_batch both
    speedup_batch1: float  # FP32 p50 / INT8 p50
    speedup_throughput: float  # INT8 images/s / FP32 images/s at throughput_batch
    throughput_batch: int
    smaller_x: float  # FP32 bytes / INT8 bytes
    words: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Int8Verdict":
        """A verdict read back (every field of it: a KdcError naming what is missing or of the wrong type)."""
        if not isinstance(data, dict) or any(f.name not in data for f in fields(cls)):
            raise KdcError(f"an INT8 verdict lacks {', '.join(f.name for f in fields(cls) if not isinstance(data, dict) or f.name not in data)}")
        verdict = cls(**{f.name: data[f.name] for f in fields(cls)})
        numbers = (verdict.speedup_batch1, verdict.speedup_throughput, verdict.smaller_x)
        if not isinstance(verdict.faster, bool) or not isinstance(verdict.words, str) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in numbers
        ):
            raise KdcError(f"an INT8 verdict holds values of the wrong type: {str(data)[:60]}")
        return verdict


def int8_verdict(fp32: dict[str, float], int8: dict[str, float], batch: int) -> Int8Verdict:
    """Whether the INT8 model is faster than the FP32 one on this machine, at batch 1 and at `batch`, in words.

    Each side gives p50_ms (batch 1), images_per_s (at batch) and bytes. INT8 counts as faster only
    when it is faster at both batch sizes; otherwise the words say it is kept for its size, and where it is slower.
    """
    speedup_1 = fp32["p50_ms"] / int8["p50_ms"]
    speedup_bulk = int8["images_per_s"] / fp32["images_per_s"]
    smaller = fp32["bytes"] / int8["bytes"]
    faster = speedup_1 > 1 and speedup_bulk > 1

    def rate(x: float, where: str) -> str:
        return f"{x:.2f}x faster {where}" if x >= 1 else f"{1 / x:.2f}x slower {where}"

    speeds = f"{rate(speedup_1, 'at batch 1')}, {rate(speedup_bulk, f'at batch {batch}')} than FP32 on this machine"
    words = f"INT8 is {smaller:.2f}x smaller and {speeds}" if faster else f"INT8 kept for size ({smaller:.2f}x smaller); {speeds}"
    return Int8Verdict(faster, speedup_1, speedup_bulk, batch, smaller, words)

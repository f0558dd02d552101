"""What `kdc compress` prints: the summary table of a run and its verdict lines."""
from __future__ import annotations

from typing import Any

from kdcompress.core import roles
from kdcompress.report.table import FittedTable, build_table, format_count


def _points(delta: float) -> str:
    return f"{delta * 100:+.1f}"


def _train_time(seconds: float | None, reused: bool) -> str:
    return "reused" if reused else ("—" if seconds is None else f"{seconds:.0f} s")


SUMMARY_HEADERS = ["model", "test acc", "Δ pts", "Δ imgs", "params", "MB", "best ep", "train"]


def summary_table(manifest: Any) -> FittedTable:
    """Teacher, then each student's baseline / distilled / control side by side: accuracy, change vs that student's
    baseline, size, training time."""
    models = manifest.models
    n_test = manifest.dataset.counts["test"]
    rows = []
    for role in [r for r in roles.ordered(models) if r == roles.TEACHER or roles.kind_of(r) in roles.TRAINED]:
        entry = models[role]
        baseline = models.get(roles.sibling(role, "baseline"))
        compared = role != roles.TEACHER and roles.kind_of(role) != "baseline" and baseline is not None
        if role == roles.TEACHER and "baseline" in models:  # one student: the teacher against its baseline, too
            baseline, compared = models["baseline"], True
        rows.append(
            [
                roles.label(role),
                f"{entry.test_accuracy:.2%}",
                _points(entry.test_accuracy - baseline.test_accuracy) if compared else "—",
                f"{entry.test_correct - baseline.test_correct:+d}" if compared else "—",
                format_count(entry.parameters),
                f"{entry.onnx_bytes / 1e6:.2f}",
                str(entry.details.get("best_epoch", "—")),
                _train_time(entry.details.get("train_seconds"), entry.details.get("reused", False)),
            ]
        )
    students = [models[r].architecture for r in roles.ordered(models) if roles.kind_of(r) == "baseline"]
    return build_table(
        f"kdc compress: {manifest.run} ({manifest.dataset.name}, {n_test} test images)\n"
        f"teacher {models[roles.TEACHER].architecture}, {'students' if len(students) == 1 else 'student architectures'} "
        f"{', '.join(students)}",
        SUMMARY_HEADERS,
        rows,
        caption="Δ: change vs the baseline (the same student trained without distillation), in points and test images",
        optional=("best ep", "Δ imgs", "train", "params"),
    )


def verdict_lines(comparisons: dict[str, Any], attribution: str | dict[str, str] | None) -> list[str]:
    """The noise verdicts of a run in words: distilled vs baseline, vs the label-smoothing control, and what they mean.

    attribution: the run's one line, or (several students) one line per student architecture.
    """
    lines = []
    for key, value in comparisons.items():
        model, _, reference = key.partition("_vs_")
        lines.append(f"{roles.label(model)} vs {roles.label(reference)}: {value['words']}")
    if isinstance(attribution, dict):
        return lines + [f"so, for {architecture}: {words}" for architecture, words in attribution.items()]
    return lines + ([f"so: {attribution}"] if attribution else [])

"""Is a distilled student better than its baseline, or is the difference noise?

Two sources of noise are checked, and a difference counts only if it survives both:
  * seeds: the change must have the same sign for every seed (paired: each seed's distilled
    students start from that seed's baseline weights and see the same batches);
  * test images: a paired bootstrap over the test images, each image's correctness averaged over
    seeds, must give a 95% interval that excludes zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kdcompress.core import roles

BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0  # the interval is reproducible: same runs, same words


@dataclass(frozen=True)
class Comparison:
    """Distilled minus baseline test accuracy (in points), over seeds and test images."""

    mean: float  # mean over seeds of the student's accuracy, in [0, 1]
    std: float  # standard deviation over seeds (ddof=1; 0 with one seed)
    delta: float  # mean change vs the baseline, in accuracy points (x 100)
    delta_std: float  # its standard deviation over seeds, in points
    per_seed: list[float]  # change per seed, in points
    better_seeds: int
    worse_seeds: int
    ci_low: float  # 95% bootstrap interval of delta over test images, in points
    ci_high: float
    verdict: str  # "better", "worse" or "noise"
    words: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def compare(student_correct: np.ndarray, baseline_correct: np.ndarray, reference: str = "the baseline") -> Comparison:
    """Compare seeds x test-images boolean correctness matrices of a student and its baseline (paired).

    reference names what the student is compared with, in the verdict's words.
    """
    student = np.asarray(student_correct, dtype=np.float64)
    baseline = np.asarray(baseline_correct, dtype=np.float64)
    if student.shape != baseline.shape or student.ndim != 2 or student.size == 0:
        raise ValueError(f"need two equal seeds x images matrices, got {student.shape} and {baseline.shape}")
    seeds = student.shape[0]
    accuracy = student.mean(axis=1)
    per_seed = (accuracy - baseline.mean(axis=1)) * 100
    per_image = (student - baseline).mean(axis=0)  # each test image's change, averaged over seeds
    low, high = bootstrap_interval(per_image)
    better, worse = int((per_seed > 0).sum()), int((per_seed < 0).sum())
    delta = float(per_seed.mean())
    if low > 0 and better == seeds:
        verdict = "better"
    elif high < 0 and worse == seeds:
        verdict = "worse"
    else:
        verdict = "noise"
    return Comparison(
        mean=float(accuracy.mean()),
        std=float(accuracy.std(ddof=1)) if seeds > 1 else 0.0,
        delta=delta,
        delta_std=float(per_seed.std(ddof=1)) if seeds > 1 else 0.0,
        per_seed=[round(float(d), 4) for d in per_seed],
        better_seeds=better,
        worse_seeds=worse,
        ci_low=low,
        ci_high=high,
        verdict=verdict,
        words=_words(verdict, delta, low, high, better, worse, seeds, reference),
    )


def bootstrap_interval(per_image: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval, in points, of the mean of per-image changes resampled with replacement."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    n = len(per_image)
    means = np.empty(BOOTSTRAP_SAMPLES)
    for start in range(0, BOOTSTRAP_SAMPLES, 1000):  # in chunks: 1000 x n indices at a time
        stop = min(start + 1000, BOOTSTRAP_SAMPLES)
        means[start:stop] = per_image[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means * 100, [tail, 100 - tail])
    return round(float(low), 4), round(float(high), 4)


def _words(verdict: str, delta: float, low: float, high: float, better: int, worse: int, seeds: int, reference: str) -> str:
    interval = f"{delta:+.1f} pts, 95% interval [{low:+.1f}, {high:+.1f}] over test images"
    every = "its only seed" if seeds == 1 else f"all {seeds} seeds"
    if verdict == "better":
        return f"better than {reference}, more than noise: {interval}; better in {every}"
    if verdict == "worse":
        return f"worse than {reference}, more than noise: {interval}; worse in {every}"
    return f"within noise: {interval}; better in {better} of {seeds} seed(s), worse in {worse}"


REFERENCES = {"baseline": "the baseline", "control": "the label-smoothing control"}  # by kind (core.roles)
PAIRS = (("student", "baseline"), ("student", "control"), ("control", "baseline"))  # (model, reference) of a run


def compare_models(correct: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """One run's verdicts, for each student: distilled vs baseline, distilled vs the control, control vs baseline
    (those present). Keyed MODEL_vs_REFERENCE by role: student_vs_baseline, or student-resnet18_vs_baseline-resnet18.

    correct maps a role to its boolean per-test-image correctness, one row per seed (or a single row).
    """
    out = {}
    for name in roles.ordered(correct):
        if roles.kind_of(name) != "student":
            continue
        for model, reference in PAIRS:
            model, reference = roles.sibling(name, model), roles.sibling(name, reference)
            if model in correct and reference in correct:
                rows = [np.atleast_2d(correct[model]), np.atleast_2d(correct[reference])]
                out[f"{model}_vs_{reference}"] = compare(*rows, reference=REFERENCES[roles.kind_of(reference)]).to_dict()
    return out


def attribution(comparisons: dict[str, dict[str, Any]], student: str = "student") -> str | None:
    """What the verdicts say together: is a gain over the baseline the teacher's knowledge, or regularisation?

    student: the distilled student's role (student-resnet18 in a run with several students).
    """
    gain = comparisons.get(f"{student}_vs_{roles.sibling(student, 'baseline')}")
    versus_control = comparisons.get(f"{student}_vs_{roles.sibling(student, 'control')}")
    if gain is None or versus_control is None:
        return None
    if gain["verdict"] == "worse":
        return "distillation cost accuracy: worse than the baseline beyond noise; this teacher and setting hurt the student"
    if gain["verdict"] != "better":
        return "no gain over the baseline beyond noise, so nothing to attribute to the teacher"
    if versus_control["verdict"] == "better":
        return "the gain over the baseline exceeds what label smoothing gives: the teacher's knowledge, not only regularisation"
    return (
        "not better than label smoothing of the same strength beyond noise: the gain over the baseline cannot be told "
        "apart from regularisation, so do not credit it to the teacher's knowledge"
    )


def attributions(comparisons: dict[str, dict[str, Any]], names: list[str], unlabeled: str | None = None) -> str | dict[str, str] | None:
    """attribution for a run's roles: its one line (one student), or a line per student architecture (several).

    unlabeled: the images without labels the distilled students also learnt from (--unlabeled, in words), said in every
    line: the distilled student saw something the baseline and the control could not.
    """
    students = [n for n in roles.ordered(names) if roles.kind_of(n) == "student"]
    if not any(roles.student_of(n) for n in students):
        return _seen(attribution(comparisons), unlabeled)
    found = {roles.student_of(n): _seen(attribution(comparisons, n), unlabeled) for n in students}
    return {architecture: words for architecture, words in found.items() if words and architecture} or None


def unlabeled_words(value: str) -> str:
    """Where --unlabeled's images came from, in words, where only the setting is known (compress says the count too):
    the dataset's auxiliary classes ('aux'), or the folder."""
    return "the dataset's auxiliary classes" if value == "aux" else value


def _seen(words: str | None, unlabeled: str | None) -> str | None:
    if words is None or not unlabeled:
        return words
    return (f"{words}. Not the same data: the distilled student also learnt {unlabeled} without labels, through the "
            f"teacher's outputs, which the baseline and the control never saw")  # fmt: skip


def roc_auc(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC-AUC of class 1's softmax probability, for 2 classes with both present in labels; None otherwise.

    Class 1 is the positive one (PNEUMONIA for chest-xray: class folders are sorted by name).
    """
    if logits.ndim != 2 or logits.shape[1] != 2 or len(np.unique(labels)) != 2:
        return None
    from sklearn.metrics import roc_auc_score

    from kdcompress.core.stats import softmax

    return float(roc_auc_score(labels, softmax(logits)[:, 1]))


def auc_summary(values: list[float | None]) -> dict[str, float]:
    """Mean and standard deviation (ddof=1; 0 for one value) of per-seed ROC-AUCs; nothing unless every seed has one."""
    if not values or any(v is None for v in values):
        return {}
    return {"roc_auc_mean": float(np.mean(values)), "roc_auc_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)

"""One student's seed, trained one way for `kdc compress` and `kdc sweep`: the unit both flows call.

A seed of a student is its fair start (`fair.fair_start`) and the trainings made from it: the
baseline, the label-smoothing control and each distilled student. This module holds, once:
- the vocabulary of those trainings (KINDS);
- which objective each one trains (`objective`), so that a new KD loss is added in one place;
- the record-or-live rule for the teacher's outputs (`teacher_outputs`);
- training one of them and scoring it on the test split (`train_one`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kdcompress.core.reporter import Reporter

KINDS = ("baseline", "control", "distilled")  # what a seed trains; compress's role names call "distilled" "student"


@dataclass(frozen=True)
class Training:
    """One training of a seed: its kind and, for a distilled student, its distillation (losses.KdLoss) and weights."""

    kind: str  # one of KINDS
    temperature: float | None = None
    alpha: float | None = None
    beta: float | None = None
    kd: Any = None  # losses.KdLoss of a distilled training
    smoothing: float | None = None  # a control's label smoothing (fair.control_smoothing)


def objective(start: Any, training: Training, teacher: Any) -> Any:
    """The objective of one training, from the seed's fair start (teacher: the live network or its recorded outputs)."""
    if training.kind == "baseline":
        return start.baseline()
    if training.kind == "control":
        return start.control(training.smoothing)
    if training.kind == "distilled":
        return start.distilled(teacher, training.temperature, training.alpha, training.beta, training.kd)
    raise ValueError(f"unknown training kind {training.kind!r}: one of {', '.join(KINDS)}")


def teacher_outputs(
    teacher: Any, data: Any, prep: Any, settings: Any, features: bool, replays: int, reporter: Reporter, label: str = "teacher outputs"
) -> Any:
    """What the distilled students of a seed learn from: the teacher's outputs recorded once, or the teacher itself.

    The rule: record when one process trains (settings.world_size 1), the outputs for every view fit in memory
    (teacher.recording_fits), and either the device is the CPU or at least two distilled trainings will replay them
    (replays). The recorded outputs are the same targets, bit for bit, as the live teacher's on CPU. On the CPU the
    teacher's forward is most of a distilled step, so even one replay pays for the recording pass; on CUDA, inside a
    training step's CUDA graph, the live teacher costs little, and a recording pays only when replayed (a sweep's grid,
    several students of one run). Under DDP each process sees its share of each batch: the teacher runs live.
    The measured costs are in benchmarks/README.md ("Does distillation beat the baseline beyond noise?").
    """
    from kdcompress.train.teacher import record_teacher, recording_fits

    if settings.world_size > 1 or (settings.device != "cpu" and replays < 2):
        return teacher
    if not recording_fits(teacher, data, settings, features):
        reporter.info(f"{label}: the teacher's outputs for every view would not fit in memory; it runs live instead")
        return teacher
    return record_teacher(teacher, data, prep, settings, features, reporter, label)


@dataclass
class Trained:
    """One finished training: its objective (the student inside), its fit record, and its test predictions."""

    objective: Any
    result: Any  # loop.FitResult
    logits: np.ndarray | None  # on the test split, from the kept epoch (None: not scored here)

    @property
    def predictions(self) -> np.ndarray:
        assert self.logits is not None, "a training that was not scored has no predictions"
        return self.logits.argmax(axis=1)

def train_one(prepared: Any, objective_: Any, settings: Any, name: str, reporter: Reporter, score: bool = True) -> Trained:
    """Train one objective from its fair start (settings: that seed's) and score its student on the test split
    (score False: a process other than rank 0, which reports nothing)."""
    from kdcompress.train.loop import fit, predict_logits
    from kdcompress.train.objectives import Distillation

    data = prepared.training_data(isinstance(objective_, Distillation))  # --unlabeled's images: the distilled only
    result = fit(objective_, data, prepared.prep, settings, reporter, name)
    logits = predict_logits(objective_.student, prepared.data.test_x, prepared.prep, prepared.device) if score else None
    return Trained(objective_, result, logits)

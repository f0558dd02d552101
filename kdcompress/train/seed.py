"""One student's seed, trained one way for `kdc compress` and `kdc sweep`: the unit both flows call.

A seed of a student is its fair start (`fair.fair_start`) and the trainings made from it: the
baseline, the label-smoothing control and each distilled student. This module holds, once:
- the vocabulary of those trainings (KINDS, and ROLE_OF: the names a compress run gives them);
- which trainings a compress run makes of each student (`trainings`), and which objective each one trains
  (`objective`), so that a new KD loss is added in one place;
- what they learn from the teacher, made once and kept (`Lessons`): its outputs under the record-or-live rule
  (`teacher_outputs`) and the control's matched smoothing;
- training one of them and scoring it on the test split (`train_one`, `Score`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np

from kdcompress.core.reporter import Reporter

KINDS = ("baseline", "control", "distilled")  # what a seed trains
ROLE_OF = {"baseline": "baseline", "distilled": "student", "control": "control"}  # KINDS -> a compress run's role names


@dataclass(frozen=True)
class Training:
    """One training of a seed: its kind and, for a distilled student, its distillation (losses.KdLoss) and weights."""

    kind: str  # one of KINDS
    temperature: float | None = None
    alpha: float | None = None
    beta: float | None = None
    kd: Any = None  # losses.KdLoss of a distilled training
    smoothing: float | None = None  # a control's label smoothing (fair.control_smoothing)


def trainings(cfg: Any, lessons: "Lessons") -> Iterator[tuple[Training, dict[str, Any]]]:
    """A compress run's trainings of one student, in order, made as they are needed: (Training, what its record
    adds). The control's smoothing is matched to the run's (T, alpha)."""
    yield Training("baseline"), {}
    yield Training("distilled", cfg.temperature, cfg.alpha, cfg.beta, cfg.kd), {}
    if cfg.control == "label-smoothing":
        matched = lessons.smoothing(cfg.temperature, cfg.alpha)
        yield Training("control", smoothing=matched["smoothing"]), {"matched": matched}


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


class Lessons:
    """What the trainings of a run (or a sweep) learn from its teacher, made on first use and kept:

    - `outputs`: the teacher's outputs on every view a seed's distilled students see, recorded once per seed (and
      per features on or off) for every student of that seed, or the live teacher (the rule: `teacher_outputs`);
    - `smoothing`: the control's label smoothing matched to (T, alpha), from the teacher's logits on the training
      split, computed once.

    A compress run (one seed) keeps its recording for all its students. A sweep trains its students one after the
    other, seed after seed, each student's sweep with its own Lessons: it passes `store`, one dict for all of them,
    and `seeds`, and a recording is kept there for the next student while all seeds' recordings fit in memory (a
    sweep of several seeds without a store keeps none: each seed's recording serves that seed's trainings and is let go).
    """

    def __init__(self, run: Any, teacher: Any, reporter: Reporter, seeds: int = 1, store: dict[Any, Any] | None = None) -> None:
        self.run, self.teacher, self.reporter, self.seeds = run, teacher, reporter, seeds
        self.shared = store is not None  # a sweep's store, kept for its next student
        self.recorded = {} if store is None else store
        self.live = False  # whether a distilled training got the live teacher
        self.recording_seconds: float | None = None  # what the last outputs() spent recording (None: replayed or live)
        self._train_logits: Any = None

    def outputs(self, settings: Any, features: bool, replays: int, label: str = "teacher outputs") -> Any:
        """The teacher's outputs for the seed of settings: replayed when recorded before, else recorded (or live)."""
        from kdcompress.train.teacher import recording_fits

        key = (settings.seed, features)
        self.recording_seconds = None
        if key in self.recorded:
            if self.shared:
                self.reporter.info(f"seed {settings.seed}: replaying the teacher outputs recorded for the previous student")
            return self.recorded[key]
        started = time.perf_counter()
        made = teacher_outputs(self.teacher, self.run.distilled_data, self.run.prep, settings, features, replays, self.reporter, label)
        if made is self.teacher:
            self.live = True
            return made
        self.recording_seconds = time.perf_counter() - started
        if self.seeds == 1 and not self.shared:
            self.recorded[key] = made  # one seed's students (compress): the rule checked that it fits
        elif self.shared and recording_fits(self.teacher, self.run.distilled_data, replace(settings, epochs=settings.epochs * self.seeds), features):
            self.recorded[key] = made
        return made

    def smoothing(self, temperature: float, alpha: float) -> dict[str, float]:
        """The control's matched smoothing for (T, alpha) (fair.control_smoothing)."""
        from kdcompress.train.fair import control_smoothing, teacher_train_logits

        if self._train_logits is None:
            self._train_logits = teacher_train_logits(self.run, self.teacher)
        return control_smoothing(self.run, self._train_logits, temperature, alpha)


@dataclass(frozen=True)
class Score:
    """A model's test logits judged against the labels: which images it gets right, its accuracy, and ROC-AUC on two
    classes (None otherwise)."""

    logits: np.ndarray
    labels: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def roc_auc(self) -> float | None:
        from kdcompress.core.stats import roc_auc

        return roc_auc(self.logits, self.labels)

    def per_class(self, classes: list[str]) -> dict[str, float | None]:
        """Each class's recall on the test split (None for a class absent from it)."""
        correct = self.correct
        return {name: float(correct[self.labels == i].mean()) if (self.labels == i).any() else None for i, name in enumerate(classes)}


@dataclass
class Trained:
    """One finished training: its objective (the student inside), its fit record, and its test predictions."""

    objective: Any
    result: Any  # loop.FitResult
    logits: np.ndarray | None  # on the test split, from the kept epoch (None: not scored here)

    def score(self, labels: np.ndarray) -> Score:
        assert self.logits is not None, "a training that was not scored has no score"
        return Score(self.logits, labels)


def train_one(prepared: Any, objective_: Any, settings: Any, name: str, reporter: Reporter, score: bool = True) -> Trained:
    """Train one objective from its fair start (settings: that seed's) and score its student on the test split
    (score False: a process other than rank 0, which reports nothing)."""
    from kdcompress.train.loop import fit, predict_logits
    from kdcompress.train.objectives import Distillation

    data = prepared.training_data(isinstance(objective_, Distillation))  # --unlabeled's images: the distilled only
    result = fit(objective_, data, prepared.prep, settings, reporter, name)
    logits = predict_logits(objective_.student, prepared.data.test_x, prepared.prep, prepared.device) if score else None
    return Trained(objective_, result, logits)

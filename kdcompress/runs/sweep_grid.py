"""A sweep's grid as files: what each seed trains (its jobs) and their names, how a run file is checked, and the
summary of a finished sweep (results.json): every grid point against the baseline and the control, over seeds."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.core.errors import KdcError
from kdcompress.core.files import read_json, write_json_atomic
from kdcompress.core.stats import REFERENCES, auc_summary, compare
from kdcompress.data.dataset import Dataset
from kdcompress.runs.environment import environment
from kdcompress.train.config import Cell
from kdcompress.train.sweep_config import SweepConfig

FORMAT = "kdcompress-sweep/1"
RETRAIN = "delete it and run the same command again to retrain that run"  # what to do with a damaged run file


@dataclass(frozen=True)
class Job:
    """One training of a seed: the baseline, a label-smoothing control matched to (T, alpha), or a distilled grid cell."""

    kind: str  # "baseline" | "control" | "distilled"
    temperature: float | None = None
    alpha: float | None = None
    beta: float | None = None
    kd_loss: str = "kl"  # a distilled job's logit term (losses.KD_LOSSES)

    @property
    def pair(self) -> tuple[float, float]:
        """(T, alpha): what a control is matched on, and what a distilled cell shares with its control."""
        assert self.temperature is not None and self.alpha is not None
        return (float(self.temperature), float(self.alpha))

    @property
    def cell(self) -> Cell:
        """(T, alpha, beta, KD loss) of a distilled job."""
        assert self.kind == "distilled" and self.beta is not None
        return (*self.pair, float(self.beta), self.kd_loss)


BASELINE = Job("baseline")


def control_job(temperature: float, alpha: float) -> Job:
    return Job("control", float(temperature), float(alpha))


def distilled_job(cell: Cell) -> Job:
    return Job("distilled", float(cell[0]), float(cell[1]), float(cell[2]), str(cell[3]))


def run_name(seed: int, job: Job) -> str:
    """File stem of one training: seed0-baseline, seed0-control-T4-alpha0.5, seed0-T4-alpha0.5-beta0.3 (KL), or
    seed0-T4-alpha0.5-beta0.3-dist (another KD loss; KL's names stay those of sweeps made before the others)."""
    if job.kind == "baseline":
        return f"seed{seed}-baseline"
    if job.kind == "control":
        return f"seed{seed}-control-T{job.temperature:g}-alpha{job.alpha:g}"
    loss = "" if job.kd_loss == "kl" else f"-{job.kd_loss}"
    return f"seed{seed}-T{job.temperature:g}-alpha{job.alpha:g}-beta{job.beta:g}{loss}"


def jobs(cfg: "SweepConfig") -> list[Job]:
    """What each seed trains, in order: the baseline, a label-smoothing control per (T, alpha) unless --control none,
    then the grid."""
    return [BASELINE, *(control_job(*pair) for pair in control_pairs(cfg)), *(distilled_job(c) for c in cfg.cells())]


def control_pairs(cfg: "SweepConfig") -> list[tuple[float, float]]:
    """The (T, alpha) of each label-smoothing control: its smoothing depends on both, not on beta."""
    if cfg.base.control != "label-smoothing":
        return []
    return [(float(t), float(a)) for t in cfg.temperatures for a in cfg.alphas]


def choose_by_validation(validation: dict[Cell, list[float]]) -> Cell:
    """The grid cell a user would pick without looking at the test split: best validation accuracy, mean over seeds.

    validation maps each cell to its runs' validation accuracies (of the epoch each run kept). Ties go
    to the first cell in grid order. Nothing here can see a test prediction.
    """
    return max(validation, key=lambda cell: float(np.mean(validation[cell])))


@dataclass(frozen=True)
class SweepRun:
    """One finished training of a sweep, as its runs/NAME.json holds it (and results.json's `runs` list)."""

    name: str
    objective: str
    test_accuracy: float
    predictions: list[int]  # one class index per test image (-1 throughout in a diverged run)
    best_val_accuracy: float  # of the epoch the training kept: what the sweep chooses its cell on
    seed: int
    kind: str  # "baseline" | "control" | "distilled"
    train_seconds: float | None = None  # None: the training diverged
    temperature: float | None = None
    alpha: float | None = None
    beta: float | None = None
    kd_loss: str | None = None  # a distilled run's (losses.KD_LOSSES)
    roc_auc: float | None = None  # two-class data only
    matched: dict[str, float] | None = None  # a control's smoothing and what it was matched to (fair.control_smoothing)
    diverged: str | None = None  # why, for a distilled training that diverged
    rest: dict[str, Any] = field(default_factory=dict)  # the rest of the training's record (device, epochs, history)

    @classmethod
    def from_dict(cls, entry: Any, test_images: int, classes: int) -> "SweepRun":
        """A run file's content, checked: its predictions one class index per test image (-1 only in a diverged
        run's), its accuracies fractions; a file cut short or edited raises ValueError saying what is wrong."""
        problem = _run_problem(entry, test_images, classes)
        if problem:
            raise ValueError(problem)
        known = {f.name for f in fields(cls)} - {"rest"}
        return cls(**{k: v for k, v in entry.items() if k in known}, rest={k: v for k, v in entry.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The run file's content: every field, the optional ones only where set, and the rest as it came."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rest"}
        optional = ("roc_auc", "matched", "diverged", "kd_loss")
        return {**{k: v for k, v in values.items() if not (k in optional and v is None)}, **self.rest}


def _run_problem(entry: Any, test_images: int, classes: int) -> str | None:
    from kdcompress.core.values import is_fraction, is_whole

    if not isinstance(entry, dict):
        return f"it holds a {type(entry).__name__}, not a training's record"
    predictions = entry.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != test_images:
        found = f"{len(predictions)} predictions" if isinstance(predictions, list) else f"predictions {str(predictions)[:20]!r}"
        return f"{found}, not one per test image ({test_images})"
    lowest = -1 if entry.get("diverged") else 0
    if not all(is_whole(p) and lowest <= p < classes for p in predictions):
        return f"predictions that are not class indices 0..{classes - 1}"
    for key in ("best_val_accuracy", "test_accuracy"):
        if not is_fraction(entry.get(key)):
            return f"{key} is {str(entry.get(key))[:20]!r}, not a fraction"
    if not is_whole(entry.get("seed")) or entry.get("kind") not in ("baseline", "control", "distilled"):
        return f"seed {str(entry.get('seed'))[:20]!r} and kind {str(entry.get('kind'))[:20]!r}, not a seed and a kind of training"
    if not isinstance(entry.get("name"), str) or not isinstance(entry.get("objective"), str):
        return "no name or objective"
    return None


def read_runs(folder: Path, test_images: int, classes: int) -> tuple[dict[str, SweepRun], dict[str, str]]:
    """Every run file of a sweep folder: the sound ones by name, and what is wrong with each damaged one."""
    runs, damaged = {}, {}
    for path in sorted((folder / "runs").glob("*.json")):
        try:
            runs[path.stem] = SweepRun.from_dict(read_json(path, RETRAIN), test_images, classes)
        except ValueError as exc:
            damaged[path.stem] = str(exc)
    return runs, damaged


def summarize(cfg: SweepConfig, data: Dataset, folder: Path, device: str) -> dict[str, Any]:
    """results.json from the run files: per grid point, mean +- std over seeds and the verdict vs baseline."""
    runs, damaged = read_runs(folder, len(data.test_y), len(data.classes))
    for name, problem in damaged.items():
        raise KdcError(f"{folder / 'runs' / name}.json is damaged ({problem}): {RETRAIN}")
    shared = read_json(folder / "sweep.json", "delete the sweep folder to start over")
    seeds = cfg.seed_list()
    table = _SeedTable(runs, seeds, data.test_y)
    baseline_acc = table.matrix(BASELINE).mean(axis=1)
    controls, cells = _compare_grid(cfg, table)
    validation = {cell: [runs[run_name(s, distilled_job(cell))].best_val_accuracy for s in seeds] for cell in cfg.cells()}
    chosen = cells[cfg.cells().index(choose_by_validation(validation))]
    best_on_test = max(cells, key=lambda c: c["delta"])
    results = {
        "format": FORMAT,
        "dataset": {"name": data.name, "source": data.source, "classes": data.classes, "counts": data.counts()},
        "settings": shared["settings"],
        "grid": {"T": list(cfg.temperatures), "alpha": list(cfg.alphas), "beta": list(cfg.betas),
                 "kd_loss": list(cfg.kd_losses), "seeds": seeds},
        "teacher": shared["teacher"],
        "baseline": {
            "mean": float(baseline_acc.mean()),
            "std": float(baseline_acc.std(ddof=1)) if len(seeds) > 1 else 0.0,
            "per_seed": baseline_acc.tolist(),
            **table.aucs(BASELINE),
        },
        "cells": cells,
        "controls": controls,
        "chosen": {
            "by": "validation accuracy (the epoch each run kept), mean over seeds; no test prediction is read",
            **chosen,
        },
        "best_on_test": {"by": "test accuracy: optimistic, since the test split chose it", **best_on_test},
        "cost": _cost(cfg, runs, folder),
        "device": device,
        "environment": environment(),
        "runs": [runs[run_name(s, j)].to_dict() for s in seeds for j in jobs(cfg) if run_name(s, j) in runs],
    }
    write_json_atomic(folder / "results.json", results)
    return results


@dataclass(frozen=True)
class _SeedTable:
    """The finished run files of a sweep, read per job across seeds."""

    runs: dict[str, SweepRun]
    seeds: list[int]
    test_y: np.ndarray

    def names(self, job: Job) -> list[str]:
        return [run_name(s, job) for s in self.seeds]

    def aucs(self, job: Job) -> dict[str, float]:
        """Mean and std of ROC-AUC over seeds (two-class data only)."""
        return auc_summary([self.runs[name].roc_auc if name in self.runs else None for name in self.names(job)])

    def matrix(self, job: Job) -> np.ndarray:
        """Seeds x test images: which images each seed's run of this job got right."""
        return np.stack([np.asarray(self.runs[name].predictions) == self.test_y for name in self.names(job)])

    def complete(self, job: Job) -> bool:
        return all(name in self.runs for name in self.names(job))


def _compare_grid(cfg: SweepConfig, table: _SeedTable) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each control and each grid cell against the baseline (and each cell against its (T, alpha) control)."""
    baseline = table.matrix(BASELINE)
    control_matrices, controls = {}, []  # label-smoothing controls, one per (T, alpha); none with --control none
    for pair in control_pairs(cfg):
        job = control_job(*pair)
        if table.complete(job):
            first = table.runs[table.names(job)[0]]
            control_matrices[pair] = table.matrix(job)
            controls.append({"temperature": pair[0], "alpha": pair[1], "objective": first.objective, "matched": first.matched,
                             **compare(control_matrices[pair], baseline).to_dict(),
                             **table.aucs(job)})  # fmt: skip
    cells = []
    for cell in cfg.cells():
        job = distilled_job(cell)
        names = table.names(job)
        distilled = table.matrix(job)
        entry = {"temperature": cell[0], "alpha": cell[1], "beta": cell[2], "kd_loss": cell[3],
                 "objective": table.runs[names[0]].objective}  # fmt: skip
        entry.update(compare(distilled, baseline).to_dict(), **table.aucs(job))
        diverged = [n for n in names if table.runs[n].diverged]
        if diverged:
            entry["diverged_seeds"] = len(diverged)
            entry["words"] = f"diverged in {len(diverged)} of {len(names)} seed(s), each counted as all wrong; " + entry["words"]
        entry["val_mean"] = float(np.mean([table.runs[n].best_val_accuracy for n in names]))
        if job.pair in control_matrices:
            entry["vs_control"] = compare(distilled, control_matrices[job.pair], reference=REFERENCES["control"]).to_dict()
        cells.append(entry)
    return controls, cells


def _cost(cfg: SweepConfig, runs: dict[str, SweepRun], folder: Path) -> dict[str, Any]:
    """What the sweep's trainings cost: a distilled training against a baseline one, and the teacher's recordings."""
    seeds = cfg.seed_list()
    costs = [read_json(p, RETRAIN).get("seconds", 0.0) for p in (folder / "runs").glob("*.cost")]
    baseline_seconds = [runs[run_name(s, BASELINE)].train_seconds for s in seeds]
    distilled_seconds = [runs[run_name(s, distilled_job(c))].train_seconds for s in seeds for c in cfg.cells()]
    distilled_seconds = [t for t in distilled_seconds if t is not None] or [0.0]  # diverged trainings have no time
    return {
        "baseline_seconds_mean": float(np.mean(baseline_seconds)),
        "distilled_seconds_mean": float(np.mean(distilled_seconds)),
        "distilled_per_baseline": float(np.mean(distilled_seconds) / np.mean(baseline_seconds)),
        "teacher_output_seconds": float(np.sum(costs)),
        "note": "train_seconds of each run as it was trained (resumed runs keep their original timing)",
    }

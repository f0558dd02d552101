"""What a sweep of N distilled students costs, against N baseline trainings (issue #4).

    python benchmarks/sweep_cost.py [--data-dir ../shared/data] [--epochs 5]

In one process, on one machine state, it times:
  1. `kdc sweep` (library call) with N = 4 students (T 2,4 x beta 0,0.3, alpha 0.5, one seed):
     its baseline, one pass of the teacher over every batch, and the N students;
  2. N baseline trainings (plain cross-entropy, the same student, data and epochs);
  3. one student distilled with the teacher run live on every batch, as `kdc compress` does:
     N of those is what a sweep would cost without recorded teacher outputs.
The teacher (trained for the same epochs) is ready before any timing starts. The record goes to
benchmarks/results/sweep-cost.json with the command, the machine and the commit.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent

from record import RESULTS, envelope, save

from kdcompress.core.reporter import NullReporter
from kdcompress.runs.sweep import sweep
from kdcompress.train.config import CompressConfig
from kdcompress.train.sweep_config import SweepConfig

GRID = dict(temperatures=(2.0, 4.0), alphas=(0.5,), betas=(0.0, 0.3), seeds=1)


def measure(data_dir: Path, epochs: int, root: Path) -> dict:
    from kdcompress.train.fair import fair_start, prepare
    from kdcompress.train.loop import fit
    from kdcompress.train.teacher import load_or_train_teacher

    base = CompressConfig(dataset="cifar3", data_dir=str(data_dir), epochs=epochs, device="cpu", artifacts=str(root))
    config = SweepConfig(base=base, out=str(root / "sweep"), **GRID)
    run = prepare(base, NullReporter())
    teacher, _ = load_or_train_teacher(replace(run.cfg, out=config.out), run.data, run.prep, run.settings, NullReporter())

    started = time.perf_counter()
    results = sweep(config)
    sweep_seconds = time.perf_counter() - started
    n = len(config.cells())

    start = fair_start(run, run.cfg.seed, teacher)  # the sweep's own starting point for this seed
    started = time.perf_counter()
    for i in range(n):
        fit(start.baseline(), run.data, run.prep, start.settings, NullReporter(), f"baseline {i}")
    baselines_seconds = time.perf_counter() - started

    started = time.perf_counter()
    fit(start.distilled(teacher, 4.0, 0.5, 0.3), run.data, run.prep, start.settings, NullReporter(), "live teacher")
    live_seconds = time.perf_counter() - started

    cost = results["cost"]
    students_seconds = cost["distilled_seconds_mean"] * n
    return {
        "students": n,
        "epochs": epochs,
        "sweep_seconds": round(sweep_seconds, 1),
        "sweep_parts": {
            "baseline_seconds": round(cost["baseline_seconds_mean"], 1),
            "teacher_outputs_seconds": round(cost["teacher_output_seconds"], 1),
            "distilled_students_seconds": round(students_seconds, 1),
        },
        "n_baselines_seconds": round(baselines_seconds, 1),
        "live_teacher_student_seconds": round(live_seconds, 1),
        "sweep_students_vs_n_baselines": round(students_seconds / baselines_seconds, 3),
        "whole_sweep_vs_n_plus_1_baselines": round(sweep_seconds / (baselines_seconds * (n + 1) / n), 3),
        "live_teacher_student_vs_baseline": round(live_seconds / (baselines_seconds / n), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        result = measure(args.data_dir, args.epochs, Path(root))
    out = save({**envelope(), "result": result}, RESULTS / "sweep-cost.json")
    print(json.dumps(result, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()

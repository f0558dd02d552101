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
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kdcompress.config import CompressConfig  # noqa: E402
from kdcompress.data import load_dataset  # noqa: E402
from kdcompress.manifest import environment  # noqa: E402
from kdcompress.reporting import NullReporter  # noqa: E402
from kdcompress.sweep import SweepConfig, sweep  # noqa: E402

GRID = dict(temperatures=(2.0, 4.0), alphas=(0.5,), betas=(0.0, 0.3), seeds=1)


def measure(data_dir: Path, epochs: int, root: Path) -> dict:
    import torch

    from kdcompress.models import create_model, create_projection
    from kdcompress.objectives import Distillation, Supervised
    from kdcompress.pipeline import load_or_train_teacher
    from kdcompress.train import TrainSettings, clone_model, fit

    base = CompressConfig(dataset="cifar3", data_dir=str(data_dir), epochs=epochs, device="cpu", artifacts=str(root)).resolved()
    config = SweepConfig(base=base, out=str(root / "sweep"), **GRID)
    data = load_dataset("cifar3", data_dir, base.image_size, base.val_fraction)
    prep = data.preprocessing()
    settings = TrainSettings(epochs, base.batch_size, base.lr, base.weight_decay, base.seed, "cpu")
    teacher, _ = load_or_train_teacher(replace(base, out=config.out), data, prep, settings, NullReporter())

    started = time.perf_counter()
    results = sweep(config)
    sweep_seconds = time.perf_counter() - started
    n = len(config.cells())

    torch.manual_seed(base.seed)
    initial = create_model(base.student, len(data.classes), data.channels)
    started = time.perf_counter()
    for i in range(n):
        fit(Supervised(clone_model(initial)), data, prep, settings, NullReporter(), f"baseline {i}")
    baselines_seconds = time.perf_counter() - started

    student = clone_model(initial)
    started = time.perf_counter()
    objective = Distillation(student, teacher, 4.0, 0.5, 0.3, create_projection(student, teacher))
    fit(objective, data, prep, settings, NullReporter(), "live teacher")
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
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    commit = os.environ.get("KDC_COMMIT") or git.stdout.strip()  # KDC_COMMIT: when run from a snapshot
    record = {
        "command": f"python benchmarks/sweep_cost.py --epochs {args.epochs}",
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or None,
        "machine": environment(),
        "result": result,
    }
    out = HERE / "results" / "sweep-cost.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()

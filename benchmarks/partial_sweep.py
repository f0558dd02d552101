"""The verdicts of a sweep that has not finished: each loss against the baseline and the control over the seeds done.

    python benchmarks/partial_sweep.py SWEEP_DIR [--data-dir DIR]

`kdc sweep` writes results.json when every training is done; until then its runs/*.json hold each finished training's
test predictions. This reads them (as kdc does: runs.sweep_grid.read_runs), takes the test labels from the sweep's own dataset settings (sweep.json and
config.yaml), and applies kdc's paired rule (core.stats.compare) over the seeds every compared pair has finished. It
reads results.json instead where there is one, so it can be checked against a finished sweep's own verdicts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from kdcompress.core.stats import compare
from kdcompress.data.dataset import load_dataset
from kdcompress.runs.sweep_grid import SweepRun, read_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--data-dir", help="where the sweep's data is (default: the sweep's config.yaml data-dir)")
    args = parser.parse_args()
    settings = json.loads((args.sweep / "sweep.json").read_text())["settings"]
    data_dir = args.data_dir or yaml.safe_load((args.sweep / "config.yaml").read_text())["data-dir"]
    data = load_dataset(settings["dataset"], data_dir, settings["image_size"], settings["val_fraction"])
    labels, classes = data.test_y, len(data.classes)
    finished = args.sweep / "results.json"
    if finished.is_file():
        runs = [SweepRun.from_dict(entry, len(labels), classes) for entry in json.loads(finished.read_text())["runs"]]
    else:
        found, damaged = read_runs(args.sweep, len(labels), classes)
        runs = list(found.values())
        for name, problem in damaged.items():
            print(f"{name}: damaged ({problem}), left out")
    correct: dict[str, dict[int, np.ndarray]] = {}
    for run in runs:
        kind = run.kind if run.kind in ("baseline", "control") else run.kd_loss or "kl"
        correct.setdefault(kind, {})[run.seed] = np.asarray(run.predictions) == labels
        print(f"{run.name}: test {run.test_accuracy:.1%}, validation {run.best_val_accuracy:.1%} (epoch {run.rest.get('best_epoch')})")
    for kind, seeds in correct.items():
        for reference in ("baseline", "control"):
            common = sorted(set(seeds) & set(correct.get(reference, {})))
            if kind in ("baseline", reference) or not common:
                continue
            verdict = compare(np.stack([seeds[s] for s in common]), np.stack([correct[reference][s] for s in common]), f"the {reference}")
            print(f"{kind} vs {reference}, seeds {common}: {verdict.mean:.1%}; {verdict.words}")


if __name__ == "__main__":
    main()

"""Two sweeps of the same student, seeds and test split that differ in one setting: each kind of training of one
against the same kind of the other, paired image by image over the seeds with kdc's noise rule (core.stats.compare).

    python benchmarks/compare_sweeps.py A B NAME     # A, B: sweep folders (OUT or OUT/STUDENT); B is judged against A

For a setting a sweep holds fixed (the learning rate, say), which kdc sweep cannot put in its grid. Prints a table
(test mean ± std, validation mean, B's Δ against A with its 95% interval and verdict) and writes
benchmarks/results/NAME.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from record import RESULTS, envelope, save

from kdcompress.core.stats import compare


def _runs(folder: Path) -> dict[str, dict[int, dict]]:
    """kind (baseline, control-..., the cell's name) -> seed -> its run file, read as written."""
    kinds: dict[str, dict[int, dict]] = {}
    for path in sorted((folder / "runs").glob("seed*.json")):
        run = json.loads(path.read_text())
        kinds.setdefault(run["name"].split("-", 1)[1], {})[run["seed"]] = run
    return kinds


def _test_labels(results: dict) -> np.ndarray:
    """The test split's labels, from the dataset the sweep recorded (its source folder is under the data folder)."""
    from kdcompress.core.reporter import NullReporter
    from kdcompress.data.dataset import load_dataset

    settings, source = results["settings"], Path(results["dataset"]["source"])
    data = load_dataset(results["dataset"]["name"], source.parent, settings["image_size"], settings["val_fraction"], NullReporter())
    return np.asarray(data.test_y)


def _correct(runs: dict[int, dict], seeds: list[int], labels: np.ndarray) -> np.ndarray:
    return np.array([np.asarray(runs[s]["predictions"]) == labels for s in seeds])


def main(a: Path, b: Path, name: str) -> None:
    labels = _test_labels(json.loads((a / "results.json").read_text()))
    first, second = _runs(a), _runs(b)
    rows = {}
    print(f"{'training':<28} {'A test':>13} {'B test':>13} {'A val':>6} {'B val':>6}  B vs A")
    for kind in first:
        seeds = sorted(set(first[kind]) & set(second.get(kind, {})))
        if not seeds:
            continue
        one, two = _correct(first[kind], seeds, labels), _correct(second[kind], seeds, labels)
        verdict = compare(two, one, "A")
        val = [float(np.mean([runs[s]["best_val_accuracy"] for s in seeds])) * 100 for runs in (first[kind], second[kind])]
        acc = [(m.mean(axis=1).mean() * 100, m.mean(axis=1).std(ddof=1) * 100 if len(seeds) > 1 else 0.0) for m in (one, two)]
        rows[kind] = {"seeds": seeds, "a_test": acc[0], "b_test": acc[1], "a_val": val[0], "b_val": val[1], "b_vs_a": verdict.words}
        print(f"{kind:<28} {acc[0][0]:6.1f} ± {acc[0][1]:3.1f} {acc[1][0]:6.1f} ± {acc[1][1]:3.1f} {val[0]:6.1f} {val[1]:6.1f}  {verdict.words}")
    save({**envelope(), "a": str(a), "b": str(b), "rows": rows}, RESULTS / f"{name}.json")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])

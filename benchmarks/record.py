"""Run one `kdc` command, time it, and record the command, the machine and the result.

    python benchmarks/record.py NAME -- kdc compress --dataset cifar3 --data-dir ../shared/data

writes benchmarks/results/NAME.json with: the command, wall time, exit code, machine (CPU model,
cores, load average before and after), git commit, library versions, and the figures of the run
the command produced or read (accuracies and training times from its manifest, or the
benchmark.json that `kdc benchmark` wrote). Timings on a shared machine are noisy: compare
ratios taken within one run, not absolute times across runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from kdcompress.core.files import write_json_atomic
from kdcompress.deploy.manifest import read_manifest
from kdcompress.deploy.run_lookup import list_runs
from kdcompress.runs.environment import environment

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def envelope(**machine: object) -> dict:
    """What every record in results/ starts with: the script's command line, when, the commit, the machine.

    machine: extra facts about the machine a script measured (CPU features, torch's CPU capability).
    The benchmark scripts call it as `from record import envelope, save` (python puts benchmarks/ on the path).
    """
    return {
        "command": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "machine": {**environment(), **machine},
    }


def save(record: dict, path: Path) -> Path:
    """Write a record atomically (a script may rewrite it after every measurement) and return its path."""
    write_json_atomic(path, record)
    return path


def _git_commit() -> str:
    """The commit measured: $KDC_COMMIT (for a snapshot outside git), else this checkout's HEAD."""
    if os.environ.get("KDC_COMMIT"):
        return os.environ["KDC_COMMIT"]
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def _summary(run_dir: Path) -> dict:
    manifest = read_manifest(run_dir).to_dict()  # the JSON form, as recorded
    out = {
        "run_dir": str(run_dir),
        "models": {
            role: {
                "architecture": m["architecture"],
                "test_accuracy": m["test_accuracy"],
                "test_correct": m["test_correct"],
                "train_seconds": m.get("train_seconds"),
                "best_epoch": m.get("best_epoch"),
                "reused": m.get("reused", False),
                "onnx_bytes": m["onnx_bytes"],
            }
            for role, m in manifest["models"].items()
        },
        "test_images": manifest["dataset"]["counts"]["test"],
        "warnings": manifest["warnings"],
    }
    bench = run_dir / "benchmark.json"
    if bench.is_file():
        data = json.loads(bench.read_text())
        out["benchmark"] = {
            "format": data.get("format"),
            "machine": data["machine"],
            "settings": data["settings"],
            "targets": data.get("targets"),
            "recommendation": data.get("recommendation"),
            "models": {
                role: {
                    "file_mb": m["file_mb"],
                    "parameters": m["parameters"],
                    "macs": m["macs"],
                    "points": [
                        {k: p[k] for k in ("target", "precision", "accuracy", "agreement", "batch1", "images_per_s", "pareto")}
                        for p in m["points"]
                    ],
                }
                for role, m in data["models"].items()
            },
        }
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__)
        return 2
    name, command = argv[0], argv[2:]
    artifacts = Path(os.environ.get("KDC_ARTIFACTS", "artifacts"))
    known = set(list_runs(artifacts))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    code = subprocess.call(command)
    seconds = time.perf_counter() - started
    runs = list_runs(artifacts)
    new = [r for r in runs if r not in known]
    target = None
    for arg in command:  # a run folder named on the command line (kdc benchmark RUN)
        if (Path(arg) / "manifest.json").is_file():
            target = Path(arg)
    target = target or (new[-1] if new else (runs[-1] if runs else None))
    record = {
        "name": name,
        "command": " ".join(command),
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "exit_code": code,
        "wall_seconds": round(seconds, 1),
        "machine": {**environment(), "load_average_1m_before": load_before, "load_average_1m_after": os.getloadavg()[0]},
        "commit": _git_commit(),
        "result": _summary(target) if target is not None and code == 0 else None,
    }
    out = save(record, RESULTS / f"{name}.json")
    print(f"recorded {out}: exit {code}, {seconds:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

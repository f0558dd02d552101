"""`kdc compress` in 2 processes under torchrun (gloo) against 1 process, same total batch (issue #12).

    python benchmarks/distributed_cpu.py [--nproc 2] [-- extra kdc compress options]

Runs `kdc compress --device cpu` twice from scratch (the teacher retrained both times), once in one
process and once with `--nproc N` (torchrun --standalone: N processes, each OMP_NUM_THREADS=1 and
batch_size / N images of every batch), and records the wall times, each training's own seconds from
the manifests, their accuracies, and the ratios. One process uses all the machine's cores through its
threads; the N processes share them. The record goes to benchmarks/results/distributed-compress-cpu.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from record import RESULTS, envelope, save

from kdcompress.deploy.manifest import read_manifest

ROLES = ("teacher", "baseline", "student", "control")


def run(out: Path, extra: list[str], nproc: int) -> dict:
    """One compress run: its command, wall seconds and per-model figures."""
    command = [sys.executable, "-m", "kdcompress", "compress", "--device", "cpu", "--retrain-teacher", "--out", str(out), *extra]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    started = time.perf_counter()
    code = subprocess.call(command, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {code}")
    manifest = read_manifest(out).to_dict()
    models = {r: manifest["models"][r] for r in ROLES if r in manifest["models"]}
    return {
        "command": " ".join(["kdc", *command[3:]]),
        "wall_seconds": round(seconds, 1),
        "train_seconds": {r: m.get("train_seconds") for r, m in models.items()},
        "test_accuracy": {r: m["test_accuracy"] for r, m in models.items()},
        "training": manifest["training"],
    }


def main(argv: list[str]) -> int:
    nproc = 2
    if argv[:1] == ["--nproc"]:
        nproc, argv = int(argv[1]), argv[2:]
    extra = argv[1:] if argv[:1] == ["--"] else argv
    with tempfile.TemporaryDirectory() as tmp:
        one = run(Path(tmp) / "one", extra, 1)
        many = run(Path(tmp) / "many", extra, nproc)
    ratios = {"wall_seconds": round(many["wall_seconds"] / one["wall_seconds"], 3)}
    ratios.update({r: round(many["train_seconds"][r] / one["train_seconds"][r], 3) for r in one["train_seconds"]})
    record = {
        "name": "distributed-compress-cpu",
        **envelope(),
        "one_process": one,
        f"{nproc}_processes": many,
        "ratios_many_over_one": ratios,
        "note": "ratio > 1: the N processes took longer; one process already uses every core through its threads",
    }
    save(record, RESULTS / "distributed-compress-cpu.json")
    print(json.dumps(ratios, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

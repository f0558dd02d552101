"""Key figures of one `kdc compress` run folder, for the GPU check logs: where the time went and what each model scored.

    python benchmarks/run_summary.py RUN_DIR [LABEL]

Prints the phases (the manifest's training.seconds), then per model: test accuracy, training seconds, its batch
(the teacher's own with --teacher-batch-size), best epoch, how its steps ran, and from history.json the first
epoch's seconds against the median epoch's (the warm-up: graph capture, cuDNN plans) and the sum of its
validation passes. Reads only the run folder (no torch).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def summary(run: Path, label: str) -> list[str]:
    manifest = json.loads((run / "manifest.json").read_text())
    history_file = run / "history.json"
    history = json.loads(history_file.read_text()) if history_file.is_file() else {}
    config, training = manifest["config"], manifest["training"]
    lines = [
        f"{label}: {config['epochs']} epochs, teacher {config['teacher_epochs']}, batch {config['batch_size']}, "
        f"teacher batch {config.get('teacher_batch_size') or config['batch_size']}, {training.get('compile')}",
        f"  seconds: {training.get('seconds')}",
    ]
    tested = manifest["dataset"]["counts"]["test"]
    for role, entry in manifest["models"].items():
        line = f"  {role:<9} test {entry['test_accuracy']:.2%} ({entry['test_correct']}/{tested})"
        if entry.get("train_seconds") is not None:
            line += f"  train {entry['train_seconds']} s  best epoch {entry.get('best_epoch')}  step {entry.get('step')}"
        if entry.get("batch_size"):
            line += f"  batch {entry['batch_size']}, peak lr {entry['peak_lr']:.3g}"
        epochs = history.get(role, [])
        if epochs and "val_seconds" in epochs[0]:
            median = statistics.median(h["seconds"] for h in epochs)
            line += (
                f"  | epoch 1 {epochs[0]['seconds']:.2f} s, median {median:.2f} s, "
                f"validation {sum(h['val_seconds'] for h in epochs):.2f} s in all"
            )
        lines.append(line)
    lines += [f"  warning: {w}" for w in manifest.get("warnings", [])]
    return lines


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    if not (folder / "manifest.json").is_file():
        print(f"{folder}: no manifest.json (the run did not finish; see its log)")
        sys.exit(0)
    print("\n".join(summary(folder, sys.argv[2] if len(sys.argv) > 2 else folder.name)))

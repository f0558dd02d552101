"""Measure EfficientNet-B3 teacher recipes on cifar3 (input to issue #4: a teacher worth distilling from).

    python benchmarks/teacher_recipes.py RECIPE [RECIPE ...] [--epochs N] [--data-dir ../shared/data]

Recipes (combinable with '+'):
  stock   timm efficientnet_b3 from scratch with a zeroed head, 3 classes (teacher recipe 2)
  stem1   stride-1 stem convolution: at 32 px the network otherwise ends at 1x1
  aux10   train on cifar3's train split plus the 7 other CIFAR-10 classes (10-way head); the
          3-class prediction is the argmax over the first 3 logits. cifar3's validation and test
          images are never trained on.

Each recipe is trained with kdcompress's own loop (AdamW, one-cycle, crop + flip) and scored on
the cifar3 test split; results go to benchmarks/results/teacher-<recipe>.json with the command,
machine and timings.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kdcompress.data.dataset import load_dataset
from kdcompress.data.readers import find_cifar10
from kdcompress.runs.environment import environment
from kdcompress.train.models import create_model
from kdcompress.train.teacher import zero_init_head
from kdcompress.train.objectives import Supervised
from kdcompress.core.reporter import Reporter
from kdcompress.train.loop import accuracy, fit, predict_logits, TrainSettings


class Lines(Reporter):
    """Prints one line per finished epoch (progress bars do not show in a log file)."""

    def progress(self, description, total):  # type: ignore[override]
        from contextlib import contextmanager

        @contextmanager
        def bar():
            last = {"status": ""}

            def advance(step: int = 1, **fields):
                status = fields.get("status", "")
                if "val" in status and status.split(" |")[0] != last["status"].split(" |")[0]:
                    print(f"{description}: {status}", flush=True)
                last["status"] = status

            yield advance

        return bar()


def other_classes(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 training images of classes 3-9 (not in cifar3)."""
    xs, ys = [], []
    for path in sorted(folder.glob("data_batch_*")):
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch["labels"], dtype=np.int64)
        xs.append(x[y >= 3])
        ys.append(y[y >= 3])
    return np.concatenate(xs), np.concatenate(ys)


def run(recipe: str, epochs: int, data_dir: Path) -> dict:
    import torch
    from torch import nn

    class FirstThree(nn.Module):
        """The full head while training; only cifar3's 3 logits when scored (validation and test)."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            logits = self.model(images)
            return logits if self.training else logits[:, :3]

    parts = set(recipe.split("+"))
    data = load_dataset("cifar3", data_dir)
    prep = data.preprocessing()
    n_classes = 3
    if "aux10" in parts:
        aux_x, aux_y = other_classes(find_cifar10(data_dir))
        data = replace(data, train_x=np.concatenate([data.train_x, aux_x]), train_y=np.concatenate([data.train_y, aux_y]))
        n_classes = 10
    torch.manual_seed(0)
    teacher = zero_init_head(create_model("efficientnet_b3", n_classes, 3))  # recipe 2, as kdc compress
    if "stem1" in parts:
        teacher.conv_stem.stride = (1, 1)
    settings = TrainSettings(epochs=epochs, batch_size=128, lr=2e-3, weight_decay=0.05, seed=0, device="cpu")
    started = time.perf_counter()
    scored = FirstThree(teacher)  # the best epoch is picked on the 3-way argmax, as the test score
    result = fit(Supervised(scored), data, prep, settings, Lines(), recipe)
    seconds = time.perf_counter() - started
    logits = predict_logits(scored, data.test_x, prep, "cpu")
    return {
        "recipe": recipe,
        "epochs": epochs,
        "train_images": int(len(data.train_y)),
        "test_accuracy": accuracy(logits, data.test_y),
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "train_seconds": round(seconds, 1),
        "history": result.history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    args = parser.parse_args()
    for recipe in args.recipes:
        outcome = run(recipe, args.epochs, args.data_dir)
        record = {
            "command": " ".join(["python", "benchmarks/teacher_recipes.py", recipe, "--epochs", str(args.epochs)]),
            "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": environment(),
            "result": outcome,
        }
        out = HERE / "results" / f"teacher-{recipe}-{args.epochs}ep.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"{recipe}: test {outcome['test_accuracy']:.1%} in {outcome['train_seconds']:.0f} s -> {out}", flush=True)


if __name__ == "__main__":
    main()

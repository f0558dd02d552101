"""Training throughput (images per second) of the teacher and the student: eager, CUDA graph, compiled (issue #10).

    python benchmarks/train_throughput.py [--device auto|cpu|cuda] [--sizes 32,224] [--modes eager,graph,compiled]
                                          [--autotune default|off|on] [--roles teacher,student,views] [--augment crop|rrc]

Each case trains through the very step `kdc compress` uses (`loop.TrainStep`: the view stream's
augmentation on the device, autocast, backward, AdamW, one-cycle schedule) on random uint8 images:
speed does not depend on what the pixels show. The first `--warmup` steps are timed apart (they hold
cuDNN autotuning, the graph capture or the compile itself: the one-off cost), then `--steps` steps are
timed with the device synchronised at both ends. --autotune on|off sets cuDNN's autotuning for every case
(KDC_CUDNN_AUTOTUNE, accel.autotune); compare the two in separate runs: PyTorch caches the algorithm it picks for
each shape, autotuned or not, and a later case in the same process reuses it. The teacher is EfficientNet-B3 built as the teacher
recipe builds it (stride-1 stem up to 64 px), the student ResNet18; role "views" times the view stream alone
(the batches each step is fed: picked, augmented, normalised, channels-last). The record goes to
benchmarks/results/train-throughput-<device>.json (and --out) with the command, the machine and the figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

from record import RESULTS, envelope, save

MODELS = {"teacher": "efficientnet_b3", "student": "resnet18"}
MODES = {"eager": "off", "graph": "graph", "compiled": "on"}  # this benchmark's names -> kdc's --compile


def _dataset(size: int, images: int):
    from kdcompress.data.dataset import Dataset

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 3, size, size), dtype=np.uint8)
    y = rng.integers(0, 3, images).astype(np.int64)
    return Dataset("random", ["a", "b", "c"], 3, size, True, "random pixels", x, y, x[:8], y[:8], x[:8], y[:8])


def measure(
    role: str, size: int, mode: str, device: str, batch: int, warmup: int, steps: int, tune: str = "default", augment: str = "crop"
) -> dict:
    """Warm-up seconds, then images per second over `steps` training steps of one network (role "views": the
    view stream alone, the batches a step is fed)."""
    import os

    import torch

    from kdcompress.train.accel import AUTOTUNE_ENV
    from kdcompress.train.loop import TrainSettings, TrainStep
    from kdcompress.train.models import adapt_to_input, create_model, zero_init_head
    from kdcompress.train.objectives import Supervised
    from kdcompress.train.views import ViewStream

    torch.manual_seed(0)
    if role == "views":
        return _views_only(size, device, batch, warmup, steps, augment)
    model = create_model(MODELS[role], 3, 3)
    if role == "teacher":
        zero_init_head(model)
        adapt_to_input(model, size)
    data = _dataset(size, batch * 4)
    settings = TrainSettings(1, batch, 2e-3, 0.05, 0, device, compile=MODES[mode], augment=augment)
    objective = Supervised(model).to(device).to(memory_format=torch.channels_last)
    if tune != "default":
        os.environ[AUTOTUNE_ENV] = tune
    try:
        step = TrainStep(objective, settings, total_steps=warmup + steps)
    finally:
        os.environ.pop(AUTOTUNE_ENV, None)
    stream = ViewStream(data, data.preprocessing(), settings)

    def batches():
        while True:
            yield from stream.epoch()

    feed = batches()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with step.ready():
        started = time.perf_counter()
        for view in range(warmup):
            step(*next(feed), view)
        sync()
        warm = time.perf_counter() - started
        started = time.perf_counter()
        for view in range(steps):
            loss, _ = step(*next(feed), warmup + view)
        sync()
        seconds = time.perf_counter() - started
    return {
        "role": role,
        "augment": augment,
        "model": MODELS[role] + (" (stride-1 stem)" if role == "teacher" and size <= 64 else ""),
        "image_size": size,
        "mode": mode if not step.fallback else f"{mode} -> eager ({step.fallback})",
        "batch": batch,
        "precision": step.precision,
        "cudnn_autotune": step.autotune if device == "cuda" else None,
        "warmup_steps": warmup,
        "warmup_seconds": round(warm, 2),
        "steps": steps,
        "ms_per_step": round(1e3 * seconds / steps, 2),
        "images_per_s": round(batch * steps / seconds, 1),
        "final_loss": float(loss.detach()),
    }


def _views_only(size: int, device: str, batch: int, warmup: int, steps: int, augment: str) -> dict:
    """Images per second of train.ViewStream alone: pick, augment, normalise, channels-last, on the device."""
    import torch

    from kdcompress.train.loop import TrainSettings
    from kdcompress.train.views import ViewStream

    data = _dataset(size, batch * 4)
    stream = ViewStream(data, data.preprocessing(), TrainSettings(1, batch, 2e-3, 0.05, 0, device, augment=augment))

    def timed(count: int) -> float:
        started, made = time.perf_counter(), 0
        while made < count:
            for _images, _ in stream.epoch():
                made += 1
                if made == count:
                    break
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    warm, seconds = timed(warmup), timed(steps)
    return {
        "role": "views", "augment": augment, "model": "none: the view stream alone", "image_size": size, "mode": "eager",
        "batch": batch, "precision": "float32", "cudnn_autotune": None, "warmup_steps": warmup,
        "warmup_seconds": round(warm, 2), "steps": steps, "ms_per_step": round(1e3 * seconds / steps, 2),
        "images_per_s": round(batch * steps / seconds, 1), "final_loss": None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default="32,224")
    parser.add_argument("--modes", default=None, help="default: eager,graph on CUDA, eager on CPU (also: compiled)")
    parser.add_argument("--roles", default="teacher,student", help="teacher, student, views (the augmented batches alone)")
    parser.add_argument("--augment", default="crop", choices=["crop", "rrc"], help="the views every case trains on")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--autotune", default="default", choices=["default", "off", "on"], help="default: accel.autotune's rule")
    parser.add_argument("--warmup", type=int, default=None, help="default: 20 on CUDA, 2 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 50 on CUDA, 5 on CPU")
    parser.add_argument("--out", type=Path, default=None, help="also write the record here")
    args = parser.parse_args()

    from kdcompress.train.accel import resolve_device

    device = resolve_device(args.device)
    warmup = args.warmup if args.warmup is not None else (20 if device == "cuda" else 2)
    steps = args.steps if args.steps is not None else (50 if device == "cuda" else 5)
    modes = (args.modes or ("eager,graph" if device == "cuda" else "eager")).split(",")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}: use {', '.join(MODES)}")
    record = {**envelope(), "device": device, "results": []}  # the machine with its GPU and CUDA version, where there is one
    target = RESULTS / f"train-throughput-{device}.json"
    for size in (int(s) for s in args.sizes.split(",")):
        for role in args.roles.split(","):
            for mode in modes:
                result = measure(role, size, mode, device, args.batch, warmup, steps, args.autotune, args.augment)
                record["results"].append(result)
                tuned = {True: "tuned", False: "untuned", None: ""}[result["cudnn_autotune"]]
                print(
                    f"{result['model']:<32} {size:>4} px  {mode:<6} {tuned:<7} {result['images_per_s']:>9.1f} img/s  "
                    f"{result['ms_per_step']:>7.2f} ms/step  (warm-up {result['warmup_seconds']:.1f} s)",
                    flush=True,
                )
                for path in [target, *([args.out] if args.out else [])]:  # after every case: a cut run keeps its figures
                    save(record, path)
    print(f"-> {target}")


if __name__ == "__main__":
    main()

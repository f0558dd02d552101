"""Streaming (--stream) against in-memory: training batches per second at 224 px on chest-xray (issue #12).

    python benchmarks/stream_throughput.py --data-dir ../shared/data/chest_xray [--device cpu] [--size 224]

Both paths make the very batches a training sees (`views.ViewStream`: seeded order, random-resized
crop, normalisation, on the device); the in-memory one indexes a uint8 tensor decoded up front, the
streamed one decodes the files in DataLoader workers for every batch. After `--warmup` batches,
`--steps` batches are timed (synchronised on CUDA). The up-front decode of the in-memory path is
timed too: it is what streaming avoids, along with holding the pixels. The first batches of both
paths are checked to be identical. With --train-steps K, K training steps of the student (ResNet18,
`loop.TrainStep`) are also timed on each path: there the decoding overlaps with the training, and on
a CPU the loader's worker processes compete with it for the cores.
The record goes to benchmarks/results/stream-throughput-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from record import RESULTS, envelope, save


def batches_per_second(data, prep, settings, warmup: int, steps: int) -> tuple[float, object]:
    """Batches per second of one ViewStream epoch after warmup batches, and its first batch."""
    import torch

    from kdcompress.train.views import ViewStream

    stream = ViewStream(data, prep, settings).epoch()
    first = next(stream)[0].clone()
    for _ in range(warmup - 1):
        next(stream)
    if settings.device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        images, _labels = next(stream)
    if settings.device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started), first


def training_images_per_second(data, prep, settings, steps: int) -> float:
    """Images per second of `steps` ResNet18 training steps fed by this data's view stream (after one warm-up step)."""
    import torch

    from kdcompress.train.loop import TrainStep
    from kdcompress.train.models import create_model
    from kdcompress.train.objectives import Supervised
    from kdcompress.train.views import ViewStream

    torch.manual_seed(0)
    objective = Supervised(create_model("resnet18", len(data.classes), data.channels)).to(settings.device)
    objective = objective.to(memory_format=torch.channels_last)
    step = TrainStep(objective, settings, total_steps=steps + 1)
    stream = ViewStream(data, prep, settings).epoch()
    with step.ready():
        images, labels = next(stream)
        step(images, labels, 0)
        if settings.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for index in range(steps):
            images, labels = next(stream)
            step(images, labels, index + 1)
        if settings.device == "cuda":
            torch.cuda.synchronize()
    return steps * settings.batch_size / (time.perf_counter() - started)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    from kdcompress.data.dataset import load_dataset, loader_workers
    from kdcompress.train.loop import TrainSettings

    figures = {}
    started = time.perf_counter()
    memory = load_dataset("chest-xray", args.data_dir, args.size)
    figures["in_memory_decode_seconds"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    streamed = load_dataset("chest-xray", args.data_dir, args.size, stream=True)
    figures["streamed_open_seconds"] = round(time.perf_counter() - started, 1)
    prep = memory.preprocessing()  # the same for both (tests/test_streaming.py); measured once
    settings = TrainSettings(1, args.batch_size, 2e-3, 0.05, 0, args.device, augment="rrc")
    memory_rate, memory_first = batches_per_second(memory, prep, settings, args.warmup, args.steps)
    stream_rate, stream_first = batches_per_second(streamed, prep, settings, args.warmup, args.steps)
    figures.update(
        in_memory_images_per_s=round(memory_rate * args.batch_size, 1),
        streamed_images_per_s=round(stream_rate * args.batch_size, 1),
        streamed_per_in_memory=round(stream_rate / memory_rate, 3),
        first_batches_identical=bool(torch.equal(memory_first, stream_first)),
        loader_workers=loader_workers(),
        train_images=len(memory.train_y),
        in_memory_pixel_bytes=int(memory.train_x.nbytes + memory.val_x.nbytes + memory.test_x.nbytes),
    )
    if args.train_steps:
        held = training_images_per_second(memory, prep, settings, args.train_steps)
        read = training_images_per_second(streamed, prep, settings, args.train_steps)
        figures.update(
            train_in_memory_images_per_s=round(held, 1),
            train_streamed_images_per_s=round(read, 1),
            train_streamed_per_in_memory=round(read / held, 3),
        )
    record = {
        "name": f"stream-throughput-{args.device}",
        **envelope(),
        "settings": vars(args),
        "result": figures,
    }
    save(record, Path(args.out) if args.out else RESULTS / f"stream-throughput-{args.device}.json")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""AdamW's per-tensor step against its fused kernel, in whole CPU training steps, interleaved in one process.

    python benchmarks/optimizer_cpu.py [--cases resnet18:16,resnet34:16,resnet18:32,efficientnet_b3:32] [--rounds 8]

Two copies of one network train through `loop.TrainStep` on the same batches of the view stream, one with
AdamW's default per-tensor step, one with `fused=True`, taking turns every epoch of 4 steps (the order swapped
every round, the first round discarded). Separate processes on this 2-core VM differed by 10-25% from one run
to the next whatever they ran, so only the interleaved medians compare the two. The record goes to
benchmarks/results/optimizer-cpu.json with the command, the machine and the figures.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from record import RESULTS, envelope, save
from train_throughput import _dataset  # noqa: E402

OPTIMIZERS = {"per-tensor": None, "fused": True}  # AdamW's fused= argument


def interleaved(name: str, size: int, rounds: int, batch: int = 128) -> dict:
    """Median seconds per step of each optimizer on one network, their steps interleaved."""
    import torch

    from kdcompress.train.loop import TrainSettings, TrainStep
    from kdcompress.train.models import create_model
    from kdcompress.train.objectives import Supervised
    from kdcompress.train.views import ViewStream

    torch.manual_seed(0)
    model = create_model(name, 10, 3)
    data = _dataset(size, batch * 4)
    settings = TrainSettings(1, batch, 2e-3, 0.05, 0, "cpu")
    steps = {}
    for label, fused in OPTIMIZERS.items():
        objective = Supervised(copy.deepcopy(model)).to(memory_format=torch.channels_last)
        step = TrainStep(objective, settings, total_steps=rounds * 4)
        step.optimizer = torch.optim.AdamW(objective.student.parameters(), lr=2e-3, weight_decay=0.05, fused=fused)
        step.scheduler = torch.optim.lr_scheduler.OneCycleLR(step.optimizer, max_lr=2e-3, total_steps=rounds * 4)
        steps[label] = step
    batches = list(ViewStream(data, data.preprocessing(), settings).epoch())
    seconds: dict[str, list[float]] = {label: [] for label in steps}
    for turn in range(rounds):
        for label in list(steps) if turn % 2 == 0 else list(steps)[::-1]:
            for view, (images, labels) in enumerate(batches):
                started = time.perf_counter()
                steps[label](images, labels, view)
                if turn > 0:
                    seconds[label].append(time.perf_counter() - started)
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    return {
        "model": name,
        "image_size": size,
        "batch": batch,
        "steps_each": len(seconds["fused"]),
        "ms_per_step": {label: round(1e3 * value, 1) for label, value in medians.items()},
        "fused_speedup": round(medians["per-tensor"] / medians["fused"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="resnet18:16,resnet34:16,resnet18:32,efficientnet_b3:32")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    record = {**envelope(), "results": []}
    target = RESULTS / "optimizer-cpu.json"
    for case in args.cases.split(","):
        name, size = case.split(":")
        result = interleaved(name, int(size), args.rounds)
        record["results"].append(result)
        ms = result["ms_per_step"]
        print(f"{name:<16} {size:>3} px  per-tensor {ms['per-tensor']:7.1f} ms/step  fused {ms['fused']:7.1f}  "
              f"({result['fused_speedup']:.2f}x)", flush=True)
        save(record, target)
    print(f"-> {target}")


if __name__ == "__main__":
    main()

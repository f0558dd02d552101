"""CPU training speed by arithmetic and memory layout (issue #10: "on CPUs with AMX / avx512_bf16, try bf16 autocast").

    python benchmarks/cpu_precision.py [--sizes 16,32] [--rounds 2] [--steps 4]

Times the training step `kdc compress` runs on CPU (forward, cross-entropy, backward, AdamW) for
the teacher (EfficientNet-B3 with the stride-1 stem the teacher recipe gives small inputs) and the
student (ResNet18), in float32 and under `torch.autocast("cpu", dtype=torch.bfloat16)`, each with
channels_last (what training uses today) and with contiguous tensors. The variants are interleaved
(ABCD ABCD ...) so that a change in the machine's load hits all of them alike; the record keeps
every round. The CPU's bf16 features (avx512_bf16, amx_bf16) and torch's CPU capability are
recorded with the figures. The record goes to benchmarks/results/cpu-precision.json (and --out).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from record import RESULTS, envelope, save

MODELS = {"teacher": "efficientnet_b3", "student": "resnet18"}
VARIANTS = [("float32", "channels_last"), ("bfloat16", "channels_last"), ("float32", "contiguous"), ("bfloat16", "contiguous")]


def cpu_features() -> list[str]:
    """The CPU flags that bfloat16 arithmetic can use, from /proc/cpuinfo."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(flag for flag in set(flags) if flag in {"avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512f"})


def images_per_second(role: str, size: int, precision: str, layout: str, batch: int, steps: int) -> tuple[float, float]:
    """Images per second over `steps` training steps after two untimed ones, and the last loss."""
    import torch

    from kdcompress.train.models import adapt_to_input, create_model, zero_init_head

    torch.manual_seed(0)
    model = create_model(MODELS[role], 10, 3)
    if role == "teacher":
        zero_init_head(model)
        adapt_to_input(model, size)
    form = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=form)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=form)
    y = torch.randint(0, 10, (batch,))

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step(), step()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    return batch * steps / (time.perf_counter() - started), loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,32", help="image sides (digits trains at 16, cifar3 and chest-xray at 32)")
    parser.add_argument("--roles", default="teacher,student")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the record here")
    args = parser.parse_args()
    import torch

    machine = {"bf16_features": cpu_features(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    record = {**envelope(**machine), "threads": torch.get_num_threads(), "results": []}
    target = RESULTS / "cpu-precision.json"
    for size in (int(s) for s in args.sizes.split(",")):
        for role in args.roles.split(","):
            rounds: dict[str, list[float]] = {f"{p} {f}": [] for p, f in VARIANTS}
            losses = {}
            for _ in range(args.rounds):
                for precision, layout in VARIANTS:
                    speed, loss = images_per_second(role, size, precision, layout, args.batch, args.steps)
                    rounds[f"{precision} {layout}"].append(round(speed, 1))
                    losses[f"{precision} {layout}"] = round(loss, 4)
            reference = sum(rounds["float32 channels_last"])
            result = {
                "role": role,
                "model": MODELS[role],
                "image_size": size,
                "batch": args.batch,
                "images_per_s": rounds,
                "vs_float32_channels_last": {name: round(sum(v) / reference, 2) for name, v in rounds.items()},
                "last_loss": losses,
            }
            record["results"].append(result)
            print(
                f"{MODELS[role]:<16} {size:>3} px  "
                + "  ".join(f"{name} {sum(v) / len(v):7.1f} img/s ({result['vs_float32_channels_last'][name]:.2f}x)" for name, v in rounds.items()),
                flush=True,
            )
            for path in [target, *([args.out] if args.out else [])]:
                save(record, path)
    print(f"-> {target}")


if __name__ == "__main__":
    main()

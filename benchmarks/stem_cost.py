"""What the small-input stem (--student-stem auto) costs each student: MACs and CPU latency, with and without it.

    python benchmarks/stem_cost.py [--models resnet10t,mobilenetv4_conv_small] [--size 32] [--threads 1]

Each student (random weights: speed does not depend on them) is exported with kdc's own exporter as timm builds
it and with models.adapt_to_input's stride-1 stem, then both files are timed interleaved on every CPU target kdc
can use here (batch 1, p50), after warm-up. ResNets have no conv_stem: auto leaves them as built, and the record
says so. The record goes to benchmarks/results/stem-cost-<cpu>.json (at another --size, stem-cost-<cpu>-<size>px.json).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from record import RESULTS, envelope, save

from kdcompress.core.errors import KdcError
from kdcompress.deploy.graph import onnx_size
from kdcompress.deploy.preprocessing import Preprocessing, normalize
from kdcompress.deploy.targets import TARGETS
from kdcompress.deploy.timing import cpu_isa, cpu_name, interleaved_latency


def main() -> None:
    import torch

    from kdcompress.train.export import export_onnx
    from kdcompress.train.models import adapt_to_input, create_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet10t,mobilenetv4_conv_small")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    prep = Preprocessing(args.size, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = np.random.default_rng(0).integers(0, 256, (4, 3, args.size, args.size), dtype=np.uint8)
    one = normalize(images[:1], prep)
    cpu = "intel" if "intel" in cpu_name().lower() else "amd" if "amd" in cpu_name().lower() else "cpu"
    record = {**envelope(cpu_isa=cpu_isa()), "settings": vars(args), "results": {}}
    target_file = RESULTS / (f"stem-cost-{cpu}.json" if args.size == 32 else f"stem-cost-{cpu}-{args.size}px.json")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            files = {}
            for stem in ("timm", "auto"):
                torch.manual_seed(0)
                model, stride = adapt_to_input(create_model(name, 3, 3), args.size, stem)
                if stem == "auto" and stride is None:
                    record["results"][name] = {"note": "no strided conv_stem: --student-stem auto leaves it as timm builds it"}
                    break
                files[stem] = Path(tmp) / f"{name}-{stem}.onnx"
                export_onnx(model.eval(), files[stem], prep, images)
            if len(files) < 2:
                continue
            calls = {}
            for target_name, target in TARGETS.items():
                if target.target.device != "cpu" or target.problem():
                    continue
                for stem, path in files.items():
                    try:
                        calls[f"{stem} @ {target_name}"] = target.load(path, args.threads, "f32" if target_name == "openvino-cpu" else "native").caller(one)
                    except KdcError as exc:
                        print(f"{target_name} {name} {stem}: {exc}")
            timings = interleaved_latency(calls, warmup=20, runs=200, min_seconds=2.0)
            record["results"][name] = {
                "macs": {stem: onnx_size(path)["macs"] for stem, path in files.items()},
                "p50_ms": {key: t["p50_ms"] for key, t in timings.items()},
            }
            save(record, target_file)
            print(name, record["results"][name], flush=True)
    save(record, target_file)


if __name__ == "__main__":
    main()

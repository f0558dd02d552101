"""Does rounding pruned channel counts to multiples of 8 matter for latency? (issue #44)

    python benchmarks/prune_round_to.py RUN      # a run folder whose checkpoints/teacher.pt to prune

Prunes the run's teacher at 50% and 80% with Torch-Pruning (L2 group magnitude, as kdc's --prune does), with and
without `round_to=8`, exports each to ONNX and times all four interleaved at batch 1 on onnxruntime-cpu, one thread.
Writes benchmarks/results/prune-round-to.json.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from record import RESULTS, envelope, save

from kdcompress.deploy.manifest import read_manifest
from kdcompress.deploy.preprocessing import normalize
from kdcompress.deploy.targets import create_session, session_call
from kdcompress.deploy.timing import interleaved_latency
from kdcompress.train.export import export_onnx
from kdcompress.train.models import count_parameters, create_model, load_weights


def main(run: Path) -> None:
    manifest = read_manifest(run)
    prep = manifest.preprocessing
    meta = torch.load(run / "checkpoints" / "teacher.pt", map_location="cpu", weights_only=True)
    teacher = create_model(meta["model"], len(meta["classes"]), meta["in_chans"])
    load_weights(teacher, run / "checkpoints" / "teacher.pt")
    images = np.load(run / "test_set.npz")["images"]
    calls, sizes = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for ratio in (0.5, 0.8):
            for round_to in (None, 8):
                model = copy.deepcopy(teacher).eval()
                for parameter in model.parameters():
                    parameter.requires_grad_(True)
                example = torch.zeros(1, prep.channels, prep.image_size, prep.image_size)
                tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
                                     ignored_layers=[model.get_classifier()], round_to=round_to).step()  # fmt: skip
                name = f"pruned {ratio:.0%}, round_to {round_to}"
                path = Path(folder) / f"{ratio}-{round_to}.onnx"
                export_onnx(model, path, prep, images[:4])
                sizes[name] = count_parameters(model)
                calls[name] = session_call(create_session(path, "cpu", 1), normalize(images[:1], prep))
        timed = interleaved_latency(calls, warmup=10, runs=200, min_seconds=2.0)
    rows = {name: {"parameters": sizes[name], "p50_ms": timed[name]["p50_ms"]} for name in calls}
    for name, row in rows.items():
        print(f"{name}: {row['parameters'] / 1e6:.2f} M parameters, {row['p50_ms']:.3f} ms")
    save({**envelope(), "run": str(run), "teacher": meta["model"], "image_size": prep.image_size, "results": rows},
         RESULTS / "prune-round-to.json")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))

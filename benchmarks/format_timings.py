"""Which format and runtime pay for which student, on this CPU: FP32, every INT8 candidate and FP16, on every target.

    python benchmarks/format_timings.py [--models efficientnet_b3,resnet18,resnet10t,mobilenetv4_conv_small]
                                        [--sizes 32,224] [--threads 1] [--name format-timings]

Each model (random weights: speed does not depend on them; the teacher is timed too, as the reference) is exported
with kdc's own exporter, prepared and quantized with kdc quantize's own code into every INT8 candidate, S8S8
included (quantize builds it only off x86; this shows why), and converted to FP16. Every file is then loaded by every
CPU target kdc knows that can run here (onnxruntime; OpenVINO at f32 and at its default precision, bf16 on CPUs
with it), and all points of one model at one size are timed interleaved in this process after warm-up (batch 1, p50
and p90; throughput at --batch), so a slow spell of the shared machine falls on all of them alike. The record, with the CPU model and its ISA flags
(avx2, avx512_vnni, amx), goes to benchmarks/results/NAME-<cpu>.json after every model, so an interrupted run keeps
what it measured. Compare the ratios to FP32 within one record, not milliseconds across machines.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from record import RESULTS, envelope, save

from kdcompress.core.errors import KdcError
from kdcompress.deploy.preprocessing import Preprocessing, normalize
from kdcompress.deploy.quantize import S8S8, U8S8, Calibration, quantize_candidate, to_fp16
from kdcompress.deploy.targets import REFERENCE, TARGETS, create_session
from kdcompress.deploy.timing import cpu_isa, cpu_name, interleaved_latency, tile_batch

MODELS = "efficientnet_b3,resnet18,resnet10t,mobilenetv4_conv_small"  # the teacher, then the students measured in README
CALIBRATION_IMAGES = 32  # random images: the scales they give do not change the kernels that run


def formats_of(name: str, size: int, work: Path, classes: int, batch: int, threads: int, quick: bool) -> dict:
    """One model at one size: params, file MB, and batch-1 / batch-N timings of every format, with ratios to FP32."""
    import torch
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from kdcompress.train.export import export_onnx
    from kdcompress.train.models import create_model

    torch.manual_seed(0)
    model = create_model(name, classes, 3)
    prep = Preprocessing(size, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = np.random.default_rng(0).integers(0, 256, (CALIBRATION_IMAGES, 3, size, size), dtype=np.uint8)
    files = {"FP32": work / f"{name}-{size}.onnx"}
    export_onnx(model, files["FP32"], prep, images[:4])
    prepared = work / f"{name}-{size}-prepared.onnx"
    quant_pre_process(str(files["FP32"]), str(prepared))
    calibration = Calibration(images, prep, create_session(prepared).get_inputs()[0].name)
    for candidate in (*U8S8, S8S8):
        files[candidate.name] = work / f"{name}-{size}-{candidate.name.replace(' ', '_')}.onnx"
        quantize_candidate(prepared, files[candidate.name], candidate, calibration)
    files["FP16"] = to_fp16(files["FP32"], work / f"{name}-{size}-fp16.onnx")
    loaded, notes = {}, []
    for target_name, target in TARGETS.items():
        if target.target.device != "cpu" or target.problem():
            continue
        for f, path in files.items():
            for precision in target.precisions(cpu_isa()):
                try:
                    point = target.load(path, threads, precision)
                except KdcError as exc:
                    notes.append(f"{target_name} {f}: {exc}")
                    break
                key = f if target_name == REFERENCE else f"{f} @ {target_name} {point.precision}"
                loaded.setdefault(key, point)
    one, many = normalize(images[:1], prep), normalize(tile_batch(images, batch), prep)
    runs, seconds = (20, 0.2) if quick else (100, 1.0)
    single = interleaved_latency({k: m.caller(one) for k, m in loaded.items()}, warmup=5, runs=runs, min_seconds=seconds)
    bulk = interleaved_latency({k: m.caller(many) for k, m in loaded.items()}, warmup=1, runs=max(5, runs // 10), min_seconds=seconds / 2)
    out = {"parameters": sum(p.numel() for p in model.parameters()), "formats": {}, "notes": notes}
    for key, point in loaded.items():
        file = key.split(" @ ")[0]
        out["formats"][key] = {
            "target": point.target.name,
            "precision": point.precision,
            "mb": files[file].stat().st_size / 1e6,
            "p50_ms": single[key]["p50_ms"],
            "p90_ms": single[key]["p90_ms"],
            "images_per_s": batch / (bulk[key]["p50_ms"] / 1e3),
            "speedup_vs_fp32": single["FP32"]["p50_ms"] / single[key]["p50_ms"],  # vs FP32 on onnxruntime-cpu
        }
    int8 = {f: v for f, v in out["formats"].items() if f.startswith(("U8S8", "S8S8")) and " @ " not in f}
    fastest = min(int8, key=lambda f: int8[f]["p50_ms"])
    out["fastest_int8"] = fastest
    out["int8_pays"] = int8[fastest]["speedup_vs_fp32"] > 1.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS, help="timm model names, comma-separated (the first is the reference)")
    parser.add_argument("--sizes", default="32,224", help="input sides in pixels, comma-separated")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--batch", type=int, default=8, help="batch of the throughput figure")
    parser.add_argument("--quick", action="store_true", help="fewer timed runs (a smoke test, not a measurement)")
    parser.add_argument("--name", default="format-timings", help="record name: results/NAME-<cpu>.json")
    args = parser.parse_args()
    isa = cpu_isa()
    cpu = "intel" if "intel" in cpu_name().lower() else "amd" if "amd" in cpu_name().lower() else "cpu"
    path = RESULTS / f"{args.name}-{cpu}.json"
    record = {**envelope(cpu_isa=isa), "settings": vars(args), "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            for name in args.models.split(","):
                done = formats_of(name, size, Path(tmp), args.classes, args.batch, args.threads, args.quick)
                record["results"].setdefault(str(size), {})[name] = done
                save(record, path)
                speeds = "  ".join(f"{f} {v['p50_ms']:.2f}" for f, v in done["formats"].items())
                print(f"{size:>4} px {name:<24} {done['parameters'] / 1e6:5.1f} M  ms: {speeds}", flush=True)
    print(f"CPU: {cpu_name()} ({', '.join(isa)}); record: {path}")


if __name__ == "__main__":
    main()

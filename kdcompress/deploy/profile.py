"""Where a file's time goes, layer by layer, and the precision each layer ran in, from each runtime's own profiler.

"INT8 is not faster" has a reason the runtime can tell: which kernels ran in integer arithmetic and which stayed in
float (a layer the quantizer left alone, a conversion between them). onnxruntime's session profiling writes one JSON
event per kernel it ran, with the node's operator and the types of its inputs as executed: a layer's precision is read
from the type of its first (activation) input there (uint8 or int8: an INT8 kernel; float: FP32; float16: FP16), never
guessed from a node's name. QuantizeLinear and DequantizeLinear are the conversions between the two. OpenVINO's
performance counters name the kernel each node executed (brgconv_avx512_amx_I8, jit_avx512_f32): its suffix is the
precision it ran in; FakeQuantize and Convert are its conversions.

Profiling slows every kernel down a little, so it runs in a pass of its own, after the timings: it never touches the
latencies kdc benchmark reports. The profiler's file goes to a temporary folder and is deleted once read.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.deploy.preprocessing import Preprocessing, normalize

RUNS = 20  # profiled inferences at batch 1 (after one unprofiled warm-up)
SHOWN = 6  # the layers shown, most time first
CONVERSIONS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
COMPUTE = ("Conv", "Gemm", "MatMul", "ConvTranspose", "FusedConv", "FusedGemm", "FusedMatMul", "NhwcFusedConv", "Convolution",
           "FullyConnected", "GroupConvolution")  # fmt: skip  # float layers an INT8 file might have quantized
PRECISIONS = {"uint8": "int8", "int8": "int8", "float": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def kernel_precision(event: dict[str, Any]) -> str:
    """What one profiled kernel ran in: 'convert' for a (de)quantization, else its first input's type as executed."""
    args = event.get("args", {})
    if args.get("op_name") in CONVERSIONS:
        return "convert"
    shapes = args.get("input_type_shape") or []
    first = next(iter(shapes[0]), None) if shapes and isinstance(shapes[0], dict) else None
    return PRECISIONS.get(first, first or "other")


def profile_onnxruntime(model: Any, prep: Preprocessing, images: np.ndarray, threads: int, runs: int = RUNS) -> dict[str, Any]:
    """Profile a model file (its path, or a manifest.ModelFile) on onnxruntime's CPU provider at batch 1.

    Returns the mean time per inference of every kernel, grouped: the share of the time in each precision, the
    layers that take most of it, and the compute layers (Conv, Gemm, MatMul) that ran in float.
    """
    import onnxruntime as ort

    from kdcompress.deploy.manifest import model_source

    one = normalize(images[:1], prep)
    with tempfile.TemporaryDirectory(prefix="kdc-profile-") as folder:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model_source(model), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: one}
        for _ in range(runs + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return summarize(events, runs)


def summarize(events: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """The profile of onnxruntime's events: the first model run left out (a warm-up), the others averaged."""
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    after = model_runs[0]["ts"] + model_runs[0]["dur"] if len(model_runs) > 1 else -1
    counted = max(1, len(model_runs) - 1) if len(model_runs) > 1 else max(1, runs)
    layers: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e.get("ts", 0) < after:
            continue
        name = e["name"][: -len("_kernel_time")]
        layer = layers.setdefault(name, {"name": name, "op": e["args"].get("op_name", "?"), "precision": kernel_precision(e), "us": 0.0})
        layer["us"] += float(e.get("dur", 0))
    return grouped(list(layers.values()), counted, "onnxruntime-cpu")


def grouped(layers: list[dict[str, Any]], counted: int, target: str) -> dict[str, Any]:
    """Layers with their total microseconds over counted inferences -> the profile: mean ms per inference, the share
    of the time in each precision, the layers that take most of it, and the compute layers that ran in float."""
    total = sum(layer["us"] for layer in layers) or 1.0
    by_precision: dict[str, float] = {}
    for layer in layers:
        layer["ms"] = layer.pop("us") / counted / 1e3
        layer["share"] = layer["ms"] * 1e3 * counted / total
        by_precision[layer["precision"]] = by_precision.get(layer["precision"], 0.0) + layer["share"]
    ranked = sorted(layers, key=lambda layer: -layer["ms"])
    return {
        "target": target,
        "runs": counted,
        "kernels_ms": sum(layer["ms"] for layer in ranked),
        "by_precision": dict(sorted(by_precision.items(), key=lambda kv: -kv[1])),
        "layers": ranked[:SHOWN],
        "float_compute": [layer["name"] for layer in ranked if layer["op"] in COMPUTE and layer["precision"] in ("fp32", "fp16", "bf16")],
    }


OPENVINO_PRECISIONS = {"i8": "int8", "u8": "int8", "f32": "fp32", "bf16": "bf16", "f16": "fp16"}
OPENVINO_CONVERSIONS = ("FakeQuantize", "Convert")


def openvino_precision(node_type: str, exec_type: str) -> str:
    """What one OpenVINO kernel ran in, from its executed kernel name ('brgconv_avx512_amx_I8' -> int8)."""
    if node_type in OPENVINO_CONVERSIONS:
        return "convert"
    return OPENVINO_PRECISIONS.get(exec_type.rsplit("_", 1)[-1].lower(), "other")


def profile_openvino(model: Any, prep: Preprocessing, images: np.ndarray, threads: int, precision: str = "f32",
                     runs: int = RUNS) -> dict[str, Any]:  # fmt: skip
    """Profile a model file on OpenVINO's CPU plugin at precision (its performance counters), at batch 1: the same
    summary as profile_onnxruntime, each kernel's precision read from the kernel type OpenVINO executed."""
    import openvino as ov

    from kdcompress.deploy.manifest import model_source

    core = ov.Core()
    config = {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}  # fmt: skip
    request = core.compile_model(core.read_model(model_source(model)), "CPU", config).create_infer_request()
    one = normalize(images[:1], prep)
    request.infer({0: one})  # the warm-up, then counters over runs inferences
    layers: dict[str, dict[str, Any]] = {}
    for _ in range(runs):
        request.infer({0: one})
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            layer = layers.setdefault(info.node_name, {"name": info.node_name, "op": info.node_type,
                                                       "precision": openvino_precision(info.node_type, info.exec_type), "us": 0.0})  # fmt: skip
            layer["us"] += info.real_time.total_seconds() * 1e6
    profile = grouped(list(layers.values()), runs, "openvino-cpu")
    return {**profile, "precision": precision}


def profile_words(role: str, profile: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: the time by precision, the layers that take most of it, what stayed in float."""
    shares = ", ".join(f"{precision} {share:.0%}" for precision, share in profile["by_precision"].items())
    lines = [f"{role} on {profile['target']}: {profile['kernels_ms']:.2f} ms in kernels per image; by precision: {shares}"]
    lines += [f"  {layer['name']} ({layer['op']}, {layer['precision']}): {layer['ms']:.3f} ms, {layer['share']:.0%}" for layer in profile["layers"][:3]]
    floats = profile["float_compute"]
    if floats and "int8" in profile["by_precision"]:
        shown = ", ".join(floats[:3]) + (f" and {len(floats) - 3} more" if len(floats) > 3 else "")
        lines.append(f"  stayed in float: {len(floats)} compute layer(s) ({shown})")
    return lines

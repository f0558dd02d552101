"""`kdc benchmark`: accuracy, size and latency of the exported ONNX files, judged through onnxruntime.

Needs no torch: everything is read from the run folder (manifest, .onnx files, test_set.npz).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.core.errors import KdcError
from kdcompress.core.files import write_json_atomic
from kdcompress.deploy.manifest import load_images, model_file, read_manifest
from kdcompress.core.reporter import NullReporter, Reporter
from kdcompress.deploy.sessions import check_model, create_session, run_logits
from kdcompress.deploy.frontier import Budget, not_faster, pareto, Point, recommend
from kdcompress.deploy.quantize import sort_nodes
from kdcompress.deploy.timing import machine, measure_speeds
from kdcompress.core import roles
from kdcompress.core.stats import attributions, compare, compare_models, REFERENCES, roc_auc


def classification_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Top-1, per-class precision / recall / F1, confusion matrix; sensitivity, specificity, ROC-AUC for 2 classes."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted = logits.argmax(axis=1)
    index = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=index, zero_division=0)
    metrics: dict[str, Any] = {
        "accuracy": float((predicted == labels).mean()),
        "correct": int((predicted == labels).sum()),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=index).tolist(),
    }
    if len(classes) == 2:
        # class 1 is the positive one (PNEUMONIA for chest-xray: folders are sorted by name)
        tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=index).ravel()
        metrics["sensitivity"] = float(tp / (tp + fn)) if tp + fn else None
        metrics["specificity"] = float(tn / (tn + fp)) if tn + fp else None
        metrics["roc_auc"] = roc_auc(logits, labels)
    return metrics


def onnx_size(path: Path) -> dict[str, Any]:
    """Parameters (initializers, each distinct tensor once), file size and multiply-accumulates per image."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    # Quantization scales and zero points are bookkeeping, not weights; int64 tensors are shapes and axes.
    side = {n.input[i] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in (1, 2) if i < len(n.input)}
    seen: set[str] = set()
    parameters = 0
    for tensor in model.graph.initializer:
        if tensor.name in side or tensor.data_type == onnx.TensorProto.INT64:
            continue
        array = numpy_helper.to_array(tensor)
        digest = hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()
        if array.size <= 1 or digest in seen:  # the same tensor stored twice counts once
            continue
        seen.add(digest)
        parameters += int(array.size)
    return {"parameters": parameters, "file_mb": path.stat().st_size / 1e6, "macs": count_macs(model)}


def count_macs(model: Any) -> int:
    """Multiply-accumulates of Conv, Gemm and MatMul nodes for one image (batch axis fixed to 1)."""
    import onnx
    from onnx import shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    del model.graph.value_info[:]
    sort_nodes(model.graph)  # shape inference reads nodes in order (FP16 files written before sort_nodes were not)
    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    # In QDQ models weights reach Conv through DequantizeLinear: follow it back to the stored tensor.
    producers = {out: node for node in inferred.graph.node for out in node.output}

    def shape(name: str) -> list[int]:
        node = producers.get(name)
        if name not in shapes and node is not None and node.op_type == "DequantizeLinear":
            return shape(node.input[0])
        return shapes.get(name, [])

    macs = 0
    for node in inferred.graph.node:
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            weight = shape(node.input[3] if node.op_type == "QLinearConv" else node.input[1])
            out = shape(node.output[0])
            if weight and out:
                macs += int(np.prod(out[1:])) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger"):
            a, out = shape(node.input[0]), shape(node.output[0])
            if a and out:
                macs += int(np.prod(out)) * a[-1]
    return macs


def gpu_status() -> tuple[bool, str]:
    """Whether onnxruntime can really run on CUDA here, and if not, why."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "onnxruntime has no CUDAExecutionProvider (pip install 'kdcompress[gpu]')"
    return True, "CUDAExecutionProvider"


BUSY_THRESHOLD = 0.25  # share of the CPU used by other processes above which timings are flagged


def benchmark_run(
    run_dir: str | Path,
    threads: int = 1,
    batch: int = 64,
    gpu: bool = True,
    quick: bool = False,
    reporter: Reporter | None = None,
    command: str | None = None,
    budget: Budget | None = None,
) -> dict[str, Any]:
    """Judge every model of a run from its ONNX file: accuracy, size, CPU (and GPU) speed, ratios vs teacher,
    the Pareto frontier, and (with a budget) the file to ship.

    Writes benchmark.json, benchmark.md and benchmark.png into the run folder. A folder that cannot be
    written (full disk, read-only) loses only the files: the results are returned all the same, with
    `saved` false and the reason in `save_error`.
    """
    reporter = reporter or NullReporter()
    _check_settings(threads=threads, batch=batch)
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    images, labels = load_images(run_dir, manifest, "test_set")
    before = machine()
    gpu_ok, gpu_reason = gpu_status() if gpu else (False, "not requested (--no-gpu)")
    names = roles.ordered(manifest.models)
    with reporter.progress("benchmark", total=2 * len(names) + 1) as advance:
        results, correct, sessions = _judge_accuracy(run_dir, manifest, names, images, labels, threads, advance)
        advance(0, status="CPU latency, every model in turn")
        for role, speed in measure_speeds(sessions, manifest.preprocessing, images, batch, quick).items():
            results[role]["cpu"] = speed
            advance(1)
        if gpu_ok:
            advance(0, status="GPU latency, every model in turn")
            gpu_ok, gpu_reason = _gpu_speeds(run_dir, manifest, results, images, batch, threads, quick, gpu_reason)
        advance(1, status="")
    after = machine()
    for role, result in results.items():
        result["ratios_vs_teacher"] = _ratios(results.get("teacher"), result)
        if "gpu" not in result:
            result["gpu"] = {"available": False, "reason": gpu_reason}
    flags = (" --quick" if quick else "") + ("" if gpu else " --no-gpu")
    result = {
        "run": manifest.run,
        "run_dir": str(run_dir),
        "dataset": manifest.dataset.name,
        "test_images": int(len(labels)),
        "classes": manifest.dataset.classes,
        "machine": _machine_record(before, after),
        "settings": {"threads": threads, "throughput_batch": batch, "quick": quick},
        "gpu": {"available": gpu_ok, "reason": gpu_reason},
        "units": UNITS,
        "models": results,
        "command": command or f"kdc benchmark {run_dir} --threads {threads} --batch {batch}{flags}",
    }
    _verdicts(result, correct, batch)
    _frontier(result, correct, budget or Budget())
    _save(result, run_dir, reporter)
    return result


def _verdicts(result: dict[str, Any], correct: dict[str, np.ndarray], batch: int) -> None:
    """The noise verdicts from the ONNX files' own predictions, each INT8 file's verdict vs its FP32 student, and
    what they mean together (stats.attributions)."""
    models = result["models"]
    result["comparisons"] = compare_models(correct)
    result["int8_verdicts"] = {r: _int8_verdict(models, batch, r) for r in models if roles.kind_of(r) == "int8"}
    if "int8" in models:  # a one-student run: where earlier versions kept its one verdict
        result["int8_verdict"] = result["int8_verdicts"]["int8"]
    result["attribution"] = attributions(result["comparisons"], list(correct))


def _check_settings(**settings: int) -> None:
    for name, value in settings.items():
        if value < 1:
            raise KdcError(f"--{name} must be at least 1, got {value}")


UNITS = {
    "latency": "milliseconds per call, batch 1",
    "throughput": "images per second",
    "file_mb": "megabytes (1e6 bytes)",
    "macs": "multiply-accumulates per image",
    "accuracy": "fraction in [0, 1]",
}


def _judge_accuracy(
    run_dir: Path, manifest: Any, names: list[str], images: np.ndarray, labels: np.ndarray, threads: int, advance: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Each model's accuracy from its ONNX file, its size, and its CPU session (kept for the timings)."""
    prep, classes = manifest.preprocessing, manifest.dataset.classes
    results: dict[str, Any] = {}
    correct: dict[str, np.ndarray] = {}  # per role, which test images the ONNX file gets right (for the verdicts)
    sessions: dict[str, Any] = {}
    for role in names:
        entry = manifest.models[role]
        path = model_file(run_dir, role, entry)
        advance(0, status=f"{role}: accuracy")
        sessions[role] = create_session(path, "cpu", threads)
        check_model(sessions[role], prep, classes, path)
        logits = run_logits(sessions[role], images, prep)
        metrics = classification_metrics(logits, labels, classes)
        correct[role] = logits.argmax(axis=1) == labels
        recorded = entry.test_correct
        metrics["recorded_correct"] = recorded
        # The ONNX file may flip an image sitting exactly on a decision boundary: one image is tolerated.
        metrics["agrees_with_manifest"] = recorded is None or abs(metrics["correct"] - recorded) <= 1
        fmt = roles.FORMATS.get(roles.kind_of(role), "FP32")
        source = roles.sibling(role, "student") if fmt != "FP32" else None  # the FP32 model it was made from
        results[role] = {"role": role, "file": entry.onnx, "format": fmt, "source": source, "accuracy": metrics, **onnx_size(path)}
        advance(1)
    return results, correct, sessions


def _gpu_speeds(
    run_dir: Path, manifest: Any, results: dict[str, Any], images: np.ndarray, batch: int, threads: int, quick: bool,
    reason: str,
) -> tuple[bool, str]:  # fmt: skip
    """Every model on onnxruntime's CUDA provider, timed in turn; (False, why) when CUDA cannot run them."""
    try:
        sessions = {role: create_session(model_file(run_dir, role, manifest.models[role]), "cuda", threads) for role in results}
        speeds = measure_speeds(sessions, manifest.preprocessing, images, batch, quick)
    except KdcError as exc:
        return False, str(exc)
    for role, speed in speeds.items():
        results[role]["gpu"] = speed
    return True, reason


def _machine_record(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The machine before timing, how busy it was before and after, and whether that was too busy to trust."""
    # Measured while this process sleeps, before and after timing: other processes' share of the CPU.
    shares = [m["cpu_busy_fraction"] for m in (before, after) if m["cpu_busy_fraction"] is not None]
    busy = max(shares) > BUSY_THRESHOLD if shares else before["load_average_1m"] > 0.5 * before["cores"]
    return {
        **before,
        "load_average_1m_after": after["load_average_1m"],
        "cpu_busy_fraction_after": after["cpu_busy_fraction"],
        "busy": busy,
    }


def points_of(models: dict[str, Any]) -> list[Point]:
    """The frontier's points: every model of a benchmark result, as timed on the CPU."""
    return [
        Point(
            name=role,
            file=m["file"],
            accuracy=m["accuracy"]["accuracy"],
            p50_ms=m["cpu"]["batch1"]["p50_ms"],
            mb=m["file_mb"],
            source=m.get("source"),
            baseline=None if roles.kind_of(role) in (roles.TEACHER, "baseline") else roles.sibling(role, "baseline"),
        )
        for role, m in models.items()
    ]


def _frontier(result: dict[str, Any], correct: dict[str, np.ndarray], budget: Budget) -> None:
    """Mark the Pareto sets (accuracy vs latency, vs size) and, under a budget, recommend the file to ship."""
    points = points_of(result["models"])
    fast, small = pareto(points, "p50_ms"), pareto(points, "mb")
    for role, model in result["models"].items():
        model["pareto"] = {"latency": role in fast, "size": role in small}
    result["not_faster_than_fp32"] = not_faster(points)
    result["recommendation"] = None
    if budget.given and "teacher" in result["models"]:
        verdicts = {
            p.name: compare(np.atleast_2d(correct[p.name]), np.atleast_2d(correct[p.baseline]), REFERENCES["baseline"]).to_dict()
            for p in points
            if p.baseline in correct
        }
        m = result["machine"]
        isa = f" ({', '.join(m['isa'])})" if m.get("isa") else ""
        where = f"{m['cpu']}{isa}, {result['settings']['threads']} onnxruntime thread(s)"
        result["recommendation"] = recommend(points, "teacher", budget, verdicts, where)


def _save(result: dict[str, Any], run_dir: Path, reporter: Reporter) -> None:
    """benchmark.json, benchmark.md and benchmark.png in the run folder; a failed write is reported, not raised."""
    from kdcompress.report.render import benchmark_markdown, benchmark_plot

    try:
        write_json_atomic(run_dir / "benchmark.json", {**result, "saved": True})
        (run_dir / "benchmark.md").write_text(benchmark_markdown(result, result["command"]))
        benchmark_plot(result, run_dir / "benchmark.png")
        result["saved"] = True
    except OSError as exc:
        result["saved"] = False
        result["save_error"] = f"could not write the benchmark files into {run_dir} ({exc.strerror or exc})"
        reporter.warn(result["save_error"] + ": the results below are not saved")


def _int8_verdict(results: dict[str, Any], batch: int, role: str = "int8") -> dict[str, Any] | None:
    """An INT8 student against the FP32 one it was made from, as timed here (None without both)."""
    from kdcompress.deploy.quantize import int8_verdict

    source = roles.sibling(role, "student")
    if role not in results or source not in results:
        return None

    def side(model: dict[str, Any]) -> dict[str, float]:
        cpu = model["cpu"]
        return {"p50_ms": cpu["batch1"]["p50_ms"], "images_per_s": cpu["throughput_images_per_s"], "bytes": model["file_mb"] * 1e6}

    return int8_verdict(side(results[source]), side(results[role]), batch)


def _ratios(teacher: dict[str, Any] | None, model: dict[str, Any]) -> dict[str, Any]:
    if teacher is None:
        return {}
    ratios: dict[str, Any] = {
        "smaller_x": teacher["file_mb"] / model["file_mb"],
        "fewer_params_x": teacher["parameters"] / model["parameters"],
        "cpu_faster_x": teacher["cpu"]["batch1"]["p50_ms"] / model["cpu"]["batch1"]["p50_ms"],
        "accuracy_change_points": 100 * (model["accuracy"]["accuracy"] - teacher["accuracy"]["accuracy"]),
    }
    if "batch1" in teacher.get("gpu", {}) and "batch1" in model.get("gpu", {}):
        ratios["gpu_faster_x"] = teacher["gpu"]["batch1"]["p50_ms"] / model["gpu"]["batch1"]["p50_ms"]
    return ratios

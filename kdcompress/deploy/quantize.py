"""`kdc quantize`: static post-training INT8 of the distilled student, format chosen by measurement.

onnxruntime's QDQ format with per-channel weights, calibrated on training images saved by
compress. Which activation type is fastest depends on the CPU (VNNI or not), so each candidate is
built, timed and scored here, and the fastest one that keeps accuracy is kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.core.errors import KdcError
from kdcompress.core.files import folder_lock, QUANTIZE_PREFIX, remove_stale
from kdcompress.deploy.manifest import load_images, ModelEntry, read_manifest, run_file, write_manifest
from kdcompress.core.reporter import NullReporter, Reporter
from kdcompress.deploy.preprocessing import normalize, Preprocessing
from kdcompress.deploy.sessions import check_model, create_session, run_logits, session_call
from kdcompress.deploy.timing import latency, tile_batch

INT8_FILE = "student-int8.onnx"
MAX_ACCURACY_LOSS = 0.01  # a candidate may lose at most 1 point of test accuracy vs the FP32 student
VERDICT_BATCH = 64  # the batch at which quantize also compares INT8 with FP32 throughput


@dataclass(frozen=True)
class Candidate:
    """One way to quantize: activation type, weight type and whether to reduce the weight range to 7 bits."""

    name: str
    activation: str  # "uint8" | "int8"
    reduce_range: bool  # advised by onnxruntime for U8S8 on CPUs without VNNI (avoids saturation)


CANDIDATES = (
    Candidate("U8S8 reduce-range", "uint8", True),
    Candidate("S8S8", "int8", False),
)


class _Calibration:
    """Feeds calibration batches to onnxruntime's calibrator."""

    def __init__(self, images: np.ndarray, prep: Preprocessing, input_name: str, batch: int = 32) -> None:
        self.batches = [normalize(images[i : i + batch], prep) for i in range(0, len(images), batch)]
        self.input_name = input_name
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


def _quantize(source: Path, target: Path, candidate: Candidate, calibration: _Calibration) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibration.rewind()
    quantize_static(
        str(source),
        str(target),
        calibration,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=candidate.reduce_range,
        activation_type=QuantType.QUInt8 if candidate.activation == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def int8_verdict(fp32: dict[str, float], int8: dict[str, float], batch: int) -> dict[str, Any]:
    """Whether the INT8 model is faster than the FP32 one on this machine, at batch 1 and at `batch`, in words.

    Each side gives p50_ms (batch 1), images_per_s (at batch) and bytes. INT8 counts as faster only
    when it is faster at both batch sizes; otherwise the words say it is kept for its size, and where it is slower.
    """
    speedup_1 = fp32["p50_ms"] / int8["p50_ms"]
    speedup_bulk = int8["images_per_s"] / fp32["images_per_s"]
    smaller = fp32["bytes"] / int8["bytes"]
    faster = speedup_1 > 1 and speedup_bulk > 1

    def rate(x: float, where: str) -> str:
        return f"{x:.2f}x faster {where}" if x >= 1 else f"{1 / x:.2f}x slower {where}"

    speeds = f"{rate(speedup_1, 'at batch 1')}, {rate(speedup_bulk, f'at batch {batch}')} than FP32 on this machine"
    words = f"INT8 is {smaller:.2f}x smaller and {speeds}" if faster else f"INT8 kept for size ({smaller:.2f}x smaller); {speeds}"
    return {
        "faster": faster,
        "speedup_batch1": speedup_1,
        "speedup_throughput": speedup_bulk,
        "throughput_batch": batch,
        "smaller_x": smaller,
        "words": words,
    }


def quantize_run(run_dir: str | Path, threads: int = 1, reporter: Reporter | None = None) -> ModelEntry:
    """Write student-int8.onnx into a run folder and add it to the manifest as model 'int8'.

    One quantize at a time per run folder: a second one is refused while the first holds the folder's lock.
    """
    run_dir = Path(run_dir)
    read_manifest(run_dir)  # a folder that is no run is said as such before any lock is taken in it
    with folder_lock(run_dir, "quantize"):
        return _quantize_locked(run_dir, threads, reporter or NullReporter())


def _quantize_locked(run_dir: Path, threads: int, reporter: Reporter) -> ModelEntry:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    manifest = read_manifest(run_dir)  # read again under the lock: another quantize may have just written it
    prep = manifest.preprocessing
    if "student" not in manifest.models:
        raise KdcError(f"{run_dir} has no distilled student to quantize (its models: {', '.join(manifest.models)})")
    student = manifest.models["student"]
    student_file = run_file(run_dir, student.onnx)
    calibration_images, _ = load_images(run_dir, manifest, "calibration_set")
    images, labels = load_images(run_dir, manifest, "test_set")
    one = normalize(images[:1], prep)
    many = normalize(tile_batch(images, VERDICT_BATCH), prep)

    def score(path: Path) -> dict[str, Any]:
        session = create_session(path, "cpu", threads)
        correct = int((run_logits(session, images, prep).argmax(1) == labels).sum())
        ms = latency(session_call(session, one), warmup=10, runs=100, min_seconds=1.0)["p50_ms"]
        bulk = latency(session_call(session, many), warmup=2, runs=10, min_seconds=0.5)["p50_ms"]
        return {"accuracy": correct / len(labels), "correct": correct, "p50_ms": ms, "images_per_s": VERDICT_BATCH / (bulk / 1e3)}

    measured = []
    remove_stale(run_dir)  # candidates left by a killed quantize
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=QUANTIZE_PREFIX, suffix=f".{os.getpid()}") as tmp:
        prepared = Path(tmp) / "student-prepared.onnx"
        check_model(create_session(student_file), prep, manifest.dataset.classes, student_file)
        fp32 = score(student_file)  # first: a damaged file fails here, in one line
        fp32_accuracy = fp32["accuracy"]
        quant_pre_process(str(student_file), str(prepared))
        input_name = create_session(prepared).get_inputs()[0].name
        calibration = _Calibration(calibration_images, prep, input_name)
        with reporter.progress("quantize", total=len(CANDIDATES)) as advance:
            for candidate in CANDIDATES:
                advance(0, status=candidate.name)
                target = Path(tmp) / f"{candidate.name.replace(' ', '_')}.onnx"
                _quantize(prepared, target, candidate, calibration)
                measured.append({"format": candidate.name, "path": target, **score(target)})
                advance(1, status=f"{candidate.name}: {measured[-1]['accuracy']:.1%}, {measured[-1]['p50_ms']:.2f} ms")
        keep = [m for m in measured if fp32_accuracy - m["accuracy"] <= MAX_ACCURACY_LOSS]
        chosen = min(keep, key=lambda m: m["p50_ms"]) if keep else max(measured, key=lambda m: m["accuracy"])
        final = run_dir / INT8_FILE
        shutil.copyfile(chosen["path"], Path(tmp) / "final.onnx")
        os.replace(Path(tmp) / "final.onnx", final)

    if not keep:
        reporter.warn(f"every INT8 candidate lost more than {MAX_ACCURACY_LOSS:.0%} accuracy; kept the most accurate")
    entry = ModelEntry(
        architecture=f"{student.architecture} (INT8, {chosen['format']} QDQ, per-channel)",
        onnx=INT8_FILE,
        parameters=student.parameters,
        onnx_bytes=final.stat().st_size,
        test_accuracy=chosen["accuracy"],
        test_correct=chosen["correct"],
    )
    entry.details["quantization"] = {
        "chosen": chosen["format"],
        "calibration_images": int(len(calibration_images)),
        "fp32_accuracy": fp32_accuracy,
        "fp32_p50_ms": fp32["p50_ms"],
        "fp32_images_per_s": fp32["images_per_s"],
        "threads": threads,
        "candidates": [{k: v for k, v in m.items() if k != "path"} for m in measured],
        "verdict": int8_verdict(
            {"p50_ms": fp32["p50_ms"], "images_per_s": fp32["images_per_s"], "bytes": student.onnx_bytes},
            {"p50_ms": chosen["p50_ms"], "images_per_s": chosen["images_per_s"], "bytes": entry.onnx_bytes},
            VERDICT_BATCH,
        ),
    }
    if not entry.details["quantization"]["verdict"]["faster"]:
        reporter.warn(entry.details["quantization"]["verdict"]["words"])
    manifest.models["int8"] = entry
    write_manifest(run_dir, manifest)
    return entry

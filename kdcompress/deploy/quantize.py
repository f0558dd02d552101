"""`kdc quantize`: the deployment formats of each distilled student and of the teacher itself: static INT8 chosen by
measurement, and FP16. The teacher's own INT8 file is the compression that needs no training, and often the most
accurate file under a latency budget.

INT8: onnxruntime's QDQ format, calibrated on training images saved by compress. Which form is fastest
depends on the CPU (VNNI, AMX or neither) and the network, so every candidate (per-channel or per-tensor
scales, with or without reduce-range) is built, timed in turn with the FP32 student, and the fastest one
that keeps accuracy is kept. FP16 is for GPU targets: its parity is checked here, its speed only on CUDA.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.core import roles
from kdcompress.core.errors import KdcError
from kdcompress.core.files import QUANTIZE_PREFIX, folder_lock, remove_stale, signals_held
from kdcompress.core.reporter import NullReporter, Reporter
from kdcompress.deploy.frontier import Int8Verdict, int8_verdict
from kdcompress.deploy.graph import sort_nodes
from kdcompress.deploy.manifest import ModelEntry, file_sha256, load_images, model_file, read_manifest, run_file, write_manifest
from kdcompress.deploy.metadata import file_metadata, stamp
from kdcompress.deploy.preprocessing import Preprocessing, normalize
from kdcompress.deploy.sessions import check_model, run_logits
from kdcompress.deploy.targets import create_session, session_call
from kdcompress.deploy.timing import cpu_isa, cpu_name, interleaved_latency, tile_batch

INT8_SUFFIX = "-int8.onnx"  # student-int8.onnx, or student-resnet18-int8.onnx in a run with several students
FP16_SUFFIX = "-fp16.onnx"
FP16_MIN_AGREEMENT = 0.99  # below this share of equal top-1 classes, FP16 is written with a warning
MAX_ACCURACY_LOSS = 0.01  # a candidate may lose at most 1 point of validation accuracy vs the FP32 student
VERDICT_BATCH = 64  # the batch at which quantize also compares INT8 with FP32 throughput


@dataclass(frozen=True)
class Candidate:
    """One way to quantize (always QDQ, INT8 weights): activation type, per-channel or per-tensor weight scales,
    and whether weights keep 7 bits (reduce-range, advised by onnxruntime for U8S8 on CPUs without VNNI)."""

    name: str
    activation: str  # "uint8" | "int8"
    per_channel: bool
    reduce_range: bool


U8S8 = (
    Candidate("U8S8 per-channel", "uint8", True, False),
    Candidate("U8S8 per-channel reduce-range", "uint8", True, True),
    Candidate("U8S8 per-tensor", "uint8", False, False),
    Candidate("U8S8 per-tensor reduce-range", "uint8", False, True),
)
S8S8 = Candidate("S8S8 per-channel", "int8", True, False)


def candidates(arch: str) -> tuple[Candidate, ...]:
    """What quantize builds and times on this CPU: the U8S8 forms everywhere, S8S8 only off x86.

    On x86 onnxruntime's S8S8 kernels measured slower than U8S8 on every model tried (benchmarks/format_timings.py
    measures them on yours), so they are not worth their calibration time there.
    """
    x86 = arch.lower() in ("x86_64", "amd64", "i386", "i686", "x86")
    return U8S8 if x86 else (*U8S8, S8S8)


class Calibration:
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


def quantize_candidate(source: Path, target: Path, candidate: Candidate, calibration: Calibration) -> None:
    """Write target: source (prepared by quant_pre_process) quantized as candidate says, calibrated by MinMax."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibration.rewind()
    quantize_static(
        str(source),
        str(target),
        calibration,
        quant_format=QuantFormat.QDQ,
        per_channel=candidate.per_channel,
        reduce_range=candidate.reduce_range,
        activation_type=QuantType.QUInt8 if candidate.activation == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def quantize_run(run_dir: str | Path, threads: int = 1, reporter: Reporter | None = None, model: str | None = None) -> dict[str, ModelEntry]:
    """Write the deployment formats of each distilled student and of the teacher into a run folder and add them to
    the manifest: student-int8.onnx (model 'int8', the fastest INT8 candidate that keeps accuracy, as timed here) and
    student-fp16.onnx (model 'fp16', for GPU targets, its parity with FP32 checked on the CPU). In a run with
    several students, each distilled student-ARCH gets student-ARCH-int8.onnx and student-ARCH-fp16.onnx
    (models int8-ARCH, fp16-ARCH). The teacher gets teacher-int8.onnx and teacher-fp16.onnx (models teacher-int8,
    teacher-fp16), made and chosen the same way. model names one of them (a distilled student or 'teacher') to
    quantize alone.

    One quantize at a time per run folder: a second one is refused while the first holds the folder's lock.
    Returns the new entries by role.
    """
    run_dir = Path(run_dir)
    read_manifest(run_dir)  # a folder that is no run is said as such before any lock is taken in it
    with folder_lock(run_dir, "quantize"):
        return _quantize_locked(run_dir, threads, reporter or NullReporter(), model)


def sources_to_quantize(manifest: Any, run_dir: Path, model: str | None = None) -> list[str]:
    """The FP32 models of a run to quantize: every distilled student and the teacher, or the one model names (refused
    in one line otherwise)."""
    students = [r for r in roles.ordered(manifest.models) if roles.kind_of(r) == "student"]
    if not students:
        raise KdcError(f"{run_dir} has no distilled student to quantize (its models: {', '.join(manifest.models)})")
    sources = students + ([roles.TEACHER] if roles.TEACHER in manifest.models else [])
    if model is None:
        return sources
    if model not in sources:
        raise KdcError(f"--model {model} is neither a distilled student nor the teacher of {run_dir}: use {' or '.join(sources)}")
    return [model]


def _quantize_locked(run_dir: Path, threads: int, reporter: Reporter, model: str | None) -> dict[str, ModelEntry]:
    """Check everything first, build every student's files in one hidden folder, then publish them all and the manifest.

    A failure on the way (a missing student file, a damaged calibration set, Ctrl-C) leaves the run folder as it was:
    no file is published before all are made.
    """
    _import_tools()
    manifest = read_manifest(run_dir)  # read again under the lock: another quantize may have just written it
    calibration = load_images(run_dir, manifest, "calibration_set")
    choice_key = "validation_set" if "validation_set" in manifest.files else "calibration_set"  # runs before validation.npz
    choice = load_images(run_dir, manifest, choice_key)
    if not run_file(run_dir, manifest.files.get("test_set", "test_set.npz")).is_file():
        raise KdcError(f"{run_dir} has no test set: the run folder is incomplete; run kdc compress again")
    test = _Once(lambda: load_images(run_dir, manifest, "test_set"))  # read only once a candidate is chosen
    remove_stale(run_dir)  # candidates left by a killed quantize
    names = sources_to_quantize(manifest, run_dir, model)
    sources = {}
    for name in names:  # every student's file is there, unchanged and fits the run, before anything is built
        sources[name] = model_file(run_dir, name, manifest.models[name])
        check_model(create_session(sources[name]), manifest.preprocessing, manifest.dataset.classes, sources[name])
    outputs = {name: (_output(run_dir, f"{name}{INT8_SUFFIX}"), _output(run_dir, f"{name}{FP16_SUFFIX}")) for name in names}
    made: dict[str, ModelEntry] = {}
    with contextlib.ExitStack() as stack:
        with signals_held():  # a SIGTERM between making the folder and registering its removal would leave it behind
            tmp = stack.enter_context(tempfile.TemporaryDirectory(dir=run_dir, prefix=QUANTIZE_PREFIX, suffix=f".{os.getpid()}"))
        staged: list[tuple[Path, Path]] = []
        for name in names:
            if len(names) > 1:
                reporter.info(f"quantizing {name}")
            work = Path(tmp) / name
            work.mkdir()
            checked = work / sources[name].name  # the bytes checked against the manifest, not the file read again
            checked.write_bytes(sources[name].data)
            int8, fp16, files = _quantize_student(
                manifest, name, checked, outputs[name], work, (choice_key, choice), test, calibration, threads, reporter
            )
            made[roles.format_role(name, "int8")], made[roles.format_role(name, "fp16")] = int8, fp16
            staged += files
        for source, final in staged:  # all made: now each is renamed into place
            os.replace(source, final)
    manifest.models.update(made)
    write_manifest(run_dir, manifest)
    return made


def _import_tools() -> None:
    """Import onnxruntime's quantization and float16 tools (onnx's C++ parts, sympy) before any candidate folder is
    made. Once in the suite a SIGTERM sent as `.quantize-*` appeared ended quantize by SIGSEGV (exit -11, nothing said)
    instead of its clean-up; not reproduced in 20 tries, and an interrupted import of a C extension is the likely
    cause, so nothing is imported any more while candidates are built."""
    import onnxruntime.quantization  # noqa: F401
    import onnxruntime.quantization.shape_inference  # noqa: F401
    import onnxruntime.transformers.float16  # noqa: F401


def _output(run_dir: Path, name: str) -> Path:
    """A file quantize writes: a plain name inside the run folder (a link out of it is refused, as for reads)."""
    path = run_file(run_dir, name)
    if path.parent.resolve() != run_dir.resolve():
        raise KdcError(f"{path} would be written outside {run_dir}: the run folder is damaged; run kdc compress again")
    return path


class _Once:
    """A value made on first use and kept (the test set: read once, after the choice)."""

    def __init__(self, make: Any) -> None:
        self.make, self.value = make, None

    def __call__(self) -> Any:
        if self.value is None:
            self.value = self.make()
        return self.value


def _quantize_student(
    manifest: Any, name: str, student_file: Path, outputs: tuple[Path, Path], work: Path,
    choice: tuple[str, tuple[np.ndarray, np.ndarray]], test: _Once, calibration: tuple[np.ndarray, np.ndarray],
    threads: int, reporter: Reporter,
) -> tuple[ModelEntry, ModelEntry, list[tuple[Path, Path]]]:  # fmt: skip
    """One distilled student's INT8 file (the candidate kept) and FP16 file, made in work: their entries, and
    (made, final) for each file to publish.

    The candidate is chosen on choice (the validation split; the calibration images in runs made before compress
    saved it): the fastest that loses at most MAX_ACCURACY_LOSS there. The test split is read only then, to score
    the chosen file once.
    """
    student = manifest.models[name]
    int8_file, fp16_file = outputs
    choice_key, choice_set = choice
    measured, fp32 = _build_and_time(manifest, student_file, work, choice_set, calibration[0], threads, reporter)
    keep = [m for m in measured if fp32["accuracy"] - m["accuracy"] <= MAX_ACCURACY_LOSS]
    chosen = min(keep, key=lambda m: m["p50_ms"]) if keep else max(measured, key=lambda m: m["accuracy"])
    on_test = score_accuracy(chosen["path"], manifest.preprocessing, test(), threads)
    chosen = {**chosen, "choice_accuracy": chosen["accuracy"], "chosen_on": choice_key, **on_test}
    fp32 = {**fp32, "choice_accuracy": fp32["accuracy"], "accuracy": student.test_accuracy}
    fp16 = _fp16(student_file, work, manifest.preprocessing, test(), threads)
    staged = [(chosen["path"], int8_file), (fp16.pop("path"), fp16_file)]
    for made, final in staged:  # each file describes itself as its source does, under its own role (deploy.metadata)
        role = roles.format_role(name, "int8" if final == int8_file else "fp16")
        stamp(made, file_metadata(manifest.dataset.classes, manifest.preprocessing, manifest.dataset.name, manifest.run, role))
    if not keep:
        reporter.warn(f"{name}: every INT8 candidate lost more than {MAX_ACCURACY_LOSS:.0%} accuracy; kept the most accurate")
    int8 = _int8_entry(student, staged[0], chosen, fp32, measured, threads)
    verdict = Int8Verdict.from_dict(int8.details["quantization"]["verdict"])
    if not verdict.faster:
        reporter.warn(f"{name}: {verdict.words}")
    entry16 = _format_entry(student, staged[1], "FP16, for GPU targets", fp16)
    entry16.details["fp16"] = {k: v for k, v in fp16.items() if k not in ("accuracy", "correct")}
    if fp16["top1_agreement"] < FP16_MIN_AGREEMENT:
        reporter.warn(f"{name}: FP16 agrees with FP32 on only {fp16['top1_agreement']:.1%} of the test images' top-1 classes")
    return int8, entry16, staged


def _build_and_time(
    manifest: Any, student_file: Path, tmp: Path, test: tuple[np.ndarray, np.ndarray], calibration_images: np.ndarray,
    threads: int, reporter: Reporter,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Build every INT8 candidate of this CPU, then score them all and the FP32 student, timed in turn."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = manifest.preprocessing
    prepared = tmp / "student-prepared.onnx"
    quant_pre_process(str(student_file), str(prepared))
    calibration = Calibration(calibration_images, prep, create_session(prepared).get_inputs()[0].name)
    built = {"FP32": student_file}
    tried = candidates(platform.machine())
    with reporter.progress("quantize", total=len(tried) + 1) as advance:
        for candidate in tried:
            advance(0, status=f"calibrating {candidate.name}")
            built[candidate.name] = tmp / f"{candidate.name.replace(' ', '_')}.onnx"
            quantize_candidate(prepared, built[candidate.name], candidate, calibration)
            advance(1)
        advance(0, status="timing FP32 and every candidate in turn")
        scores = score_models(built, prep, test, threads)
        advance(1, status="")
    scores["FP32"]["calibration_images"] = int(len(calibration_images))
    measured = [{"format": c.name, "path": built[c.name], **scores[c.name]} for c in tried]
    return measured, scores["FP32"]


def score_accuracy(path: Path, prep: Preprocessing, split: tuple[np.ndarray, np.ndarray], threads: int) -> dict[str, Any]:
    """One file's accuracy and correct count on a split."""
    images, labels = split
    correct = int((run_logits(create_session(path, "cpu", threads), images, prep).argmax(1) == labels).sum())
    return {"accuracy": correct / len(labels), "correct": correct}


def score_models(files: dict[str, Path], prep: Preprocessing, test: tuple[np.ndarray, np.ndarray], threads: int) -> dict[str, Any]:
    """Accuracy on a split (the validation split when choosing), batch-1 p50 and throughput at VERDICT_BATCH of several
    ONNX files, timed interleaved."""
    images, labels = test
    sessions = {name: create_session(path, "cpu", threads) for name, path in files.items()}
    scores: dict[str, Any] = {}
    for name, session in sessions.items():
        correct = int((run_logits(session, images, prep).argmax(1) == labels).sum())
        scores[name] = {"accuracy": correct / len(labels), "correct": correct}
    one = normalize(images[:1], prep)
    many = normalize(tile_batch(images, VERDICT_BATCH), prep)
    single = interleaved_latency({n: session_call(s, one) for n, s in sessions.items()}, warmup=10, runs=100, min_seconds=1.0)
    bulk = interleaved_latency({n: session_call(s, many) for n, s in sessions.items()}, warmup=2, runs=10, min_seconds=0.5)
    for name in sessions:
        scores[name]["p50_ms"] = single[name]["p50_ms"]
        scores[name]["images_per_s"] = VERDICT_BATCH / (bulk[name]["p50_ms"] / 1e3)
    return scores


def _format_entry(student: ModelEntry, files: tuple[Path, Path], what: str, scores: dict[str, Any]) -> ModelEntry:
    """The manifest's entry of a file made from the FP32 student (what: its format, in words), scored on the test set.

    files: where the file is now and where it will be published (its name in the run folder).
    """
    made, final = files
    return ModelEntry(
        architecture=f"{student.architecture} ({what})",
        onnx=final.name,
        parameters=student.parameters,
        onnx_bytes=made.stat().st_size,
        test_accuracy=scores["accuracy"],
        test_correct=scores["correct"],
        details={"sha256": file_sha256(made)},
    )


def _int8_entry(
    student: ModelEntry, final: tuple[Path, Path], chosen: dict[str, Any], fp32: dict[str, Any], measured: list[dict[str, Any]], threads: int
) -> ModelEntry:
    """The manifest's record of the INT8 file: the candidate kept, every candidate's figures and the verdict vs FP32."""
    entry = _format_entry(student, final, f"INT8, {chosen['format']} QDQ", chosen)
    entry.details["quantization"] = {
        "chosen": chosen["format"],
        "chosen_on": chosen["chosen_on"],  # validation_set (or calibration_set in older runs): never the test split
        "calibration_images": fp32["calibration_images"],
        "fp32_accuracy": fp32["accuracy"],  # on test, as compress recorded it
        "fp32_choice_accuracy": fp32["choice_accuracy"],
        "fp32_p50_ms": fp32["p50_ms"],
        "fp32_images_per_s": fp32["images_per_s"],
        "threads": threads,
        "machine": {"cpu": cpu_name(), "isa": cpu_isa(), "arch": platform.machine()},
        "candidates": [{**{k: v for k, v in m.items() if k not in ("path", "accuracy", "correct")}, "choice_accuracy": m["accuracy"]} for m in measured],
        "verdict": int8_verdict(
            {"p50_ms": fp32["p50_ms"], "images_per_s": fp32["images_per_s"], "bytes": student.onnx_bytes},
            {"p50_ms": chosen["p50_ms"], "images_per_s": chosen["images_per_s"], "bytes": entry.onnx_bytes},
            VERDICT_BATCH,
        ).to_dict(),
    }
    return entry


def _fp16(student_file: Path, tmp: Path, prep: Preprocessing, test: tuple[np.ndarray, np.ndarray], threads: int) -> dict[str, Any]:
    """student-fp16.onnx in tmp (float16 weights and arithmetic, float32 input and output), its accuracy and its
    parity with the FP32 file on the test images, both run on this CPU."""
    path = to_fp16(student_file, tmp / f"{student_file.stem}{FP16_SUFFIX}")
    images, labels = test
    fp32 = run_logits(create_session(student_file, "cpu", threads), images, prep)
    half = run_logits(create_session(path, "cpu", threads), images, prep)
    correct = int((half.argmax(1) == labels).sum())
    return {
        "path": path,
        "accuracy": correct / len(labels),
        "correct": correct,
        "top1_agreement": float((half.argmax(1) == fp32.argmax(1)).mean()),
        "max_abs_logit_difference": float(np.abs(half - fp32).max()),
        "parity_checked_on": "CPUExecutionProvider",
    }


def to_fp16(source: Path, target: Path) -> Path:
    """Write target: source with FP16 weights and compute, FP32 inputs and outputs (keep_io_types); returns target."""
    import warnings

    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():  # it warns once per weight it rounds to float16's range
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    sort_nodes(model.graph)  # the converter appends the input's Cast last: put every node after its inputs' producers
    onnx.save(model, str(target))
    return target

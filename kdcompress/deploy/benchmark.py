"""`kdc benchmark`: every model file of a run, run by every target that can (onnxruntime, OpenVINO) at each precision.

Needs no torch: everything is read from the run folder (manifest, .onnx files, test_set.npz). Each point
(file, target, precision) gets its own accuracy from its own predictions, its agreement with the FP32 file
on onnxruntime-cpu, and its speed, all points timed interleaved in this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.core import roles
from kdcompress.core.errors import KdcError
from kdcompress.core.reporter import NullReporter, Reporter
from kdcompress.core.stats import attributions, compare_models, roc_auc, unlabeled_words
from kdcompress.deploy.frontier import Budget, Int8Verdict, Point, int8_verdict, pareto, recommend
from kdcompress.deploy.graph import onnx_size
from kdcompress.deploy.manifest import load_images, model_file, read_manifest
from kdcompress.deploy.preprocessing import normalize
from kdcompress.deploy.results import BenchmarkResult, ModelResult, PointResult
from kdcompress.deploy.sessions import check_model
from kdcompress.deploy.targets import REFERENCE, TARGETS, Loaded, runtime_versions
from kdcompress.deploy.timing import interleaved_latency, machine, tile_batch

BUSY_THRESHOLD = 0.25  # share of the CPU used by other processes above which timings are flagged
ACCURACY_BATCH = 256  # images per call when a point scores the test split


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


def choose_targets(requested: list[str] | None, gpu: bool = True) -> dict[str, str | None]:
    """Every target kdc knows -> None when this benchmark uses it, or why not (one line). onnxruntime-cpu always runs
    (the reference). A target asked for by name that cannot run here is a KdcError; others are said and skipped."""
    unknown = [name for name in requested or [] if name not in TARGETS]
    if unknown:
        raise KdcError(f"unknown target '{unknown[0]}': kdc knows {', '.join(TARGETS)}")
    chosen: dict[str, str | None] = {}
    for name, target in TARGETS.items():
        problem: str | None
        if requested is not None and name not in requested and name != REFERENCE:
            problem = "not requested (--target)"  # and never probed: a runtime not asked for is not even imported
        elif name == "onnxruntime-cuda" and not gpu:
            problem = "not requested (--no-gpu)"
        else:
            problem = target.problem()
            if problem and requested is not None and name in requested:
                raise KdcError(f"--target {name}: {problem}")
        chosen[name] = problem
    if chosen[REFERENCE]:
        raise KdcError(f"{REFERENCE} cannot run here: {chosen[REFERENCE]}")
    return chosen


def benchmark_run(
    run_dir: str | Path,
    threads: int = 1,
    batch: int = 64,
    gpu: bool = True,
    quick: bool = False,
    reporter: Reporter | None = None,
    command: str | None = None,
    budget: Budget | None = None,
    targets: list[str] | None = None,
) -> BenchmarkResult:
    """Judge every model file of a run on every usable target and precision: accuracy, agreement, size, speed, the
    noise verdicts, the Pareto frontier and (with a budget) the point to ship. targets: names to use (default: all
    that can run here). Writes nothing: runs.benchmark saves the result files."""
    reporter = reporter or NullReporter()
    _check_settings(threads=threads, batch=batch)
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    images, labels = load_images(run_dir, manifest, "test_set")
    chosen = choose_targets(targets, gpu)
    for name, why in chosen.items():
        if why and not why.startswith("not requested"):
            reporter.info(f"target {name} not used: {why}")
    before = machine()
    names = roles.ordered(manifest.models)
    models, loaded, correct, notes = {}, {}, {}, []
    try:
        with reporter.progress("benchmark", total=len(names) + 2) as advance:
            for role in names:
                advance(0, status=f"{role}: accuracy on every target")
                models[role], points = _score_model(run_dir, manifest, role, images, labels, chosen, threads, before["isa"], notes)
                for point, (model, right) in points.items():
                    loaded[point], correct[point] = model, right
                advance(1)
            _reference_agreement(models, loaded, images, manifest.preprocessing)
            advance(0, status="latency, every point in turn")
            _time_points(models, loaded, images, manifest.preprocessing, batch, quick, notes)
            advance(2, status="")
    finally:  # the runtimes' objects (OpenVINO's compiled models) go now, not at interpreter exit after a SIGTERM
        loaded.clear()
        import gc

        gc.collect()
    after = machine()
    if not quick or (budget is not None and budget.max_ram is not None):
        _footprints(models, run_dir, manifest, threads, notes, reporter)
    result = BenchmarkResult(
        run=manifest.run, run_dir=str(run_dir), dataset=manifest.dataset.name, test_images=int(len(labels)),
        classes=manifest.dataset.classes, machine=_machine_record(before, after, threads, [n for n, why in chosen.items() if not why]),
        settings={"threads": threads, "throughput_batch": batch, "quick": quick}, targets=chosen, models=models,
        notes=notes, command=command or f"kdc benchmark {run_dir}",
    )  # fmt: skip
    reference = {role: correct[m.reference.key] for role, m in models.items()}
    result.comparisons = compare_models(reference)
    unlabeled = manifest.details.get("config", {}).get("unlabeled")  # the words compress said it with are in its attribution
    result.attribution = attributions(result.comparisons, list(reference), f"the images of {unlabeled_words(unlabeled)}" if unlabeled else None)
    result.int8_verdicts = {r: _int8_verdict(models, r, batch) for r in models if roles.format_of(r) == "int8" and roles.source_of(r) in models}
    _frontier(result, correct, budget or Budget())
    _profile(result, run_dir, manifest, images, threads, reporter)
    return result


def _footprints(models: dict[str, ModelResult], run_dir: Path, manifest: Any, threads: int, notes: list[str], reporter: Reporter) -> None:
    """Each CPU point's load time, first inference and added peak memory, each in a child process of its own
    (deploy.footprint), after the timings; a point whose child fails gets a note and no footprint."""
    from kdcompress.deploy.footprint import footprint
    from kdcompress.deploy.manifest import run_file

    prep = manifest.preprocessing
    shape = [1, prep.channels, prep.image_size, prep.image_size]
    points = [(role, p) for role, m in models.items() for p in m.points if TARGETS[p.target].target.device == "cpu"]
    with reporter.progress("load, first inference and memory, a process per point", total=len(points)) as advance:
        for role, point in points:
            entry = manifest.models[role]
            try:
                point.footprint = footprint(run_file(run_dir, entry.onnx), entry.details.get("sha256"), point.target,
                                            point.precision, threads, shape)  # fmt: skip
            except Exception as exc:  # the child's own failure (a runtime that cannot load it there): one note
                notes.append(f"{point.key}: load, first inference and memory not measured ({_said(exc)})")
            advance(1)


def _profile(result: BenchmarkResult, run_dir: Path, manifest: Any, images: np.ndarray, threads: int, reporter: Reporter) -> None:
    """Per-layer profiles (deploy.profile), in a pass of their own after the timings: of the recommended model and of
    every INT8 file that is not faster than its FP32 file here, on onnxruntime-cpu and, where it was used, openvino-cpu."""
    from kdcompress.deploy.profile import profile_onnxruntime, profile_openvino

    wanted = [r for r, verdict in result.int8_verdicts.items() if not verdict.faster]
    chosen = (result.recommendation or {}).get("model")
    wanted = ([chosen] if chosen in result.models else []) + [r for r in wanted if r != chosen]
    openvino = not result.targets.get("openvino-cpu") and "openvino-cpu" in result.targets  # used in this benchmark
    for role in wanted:
        reporter.info(f"profiling {role} layer by layer (the runtimes' own profilers, apart from the timings)")
        path = model_file(run_dir, role, manifest.models[role])
        result.profiles[role] = [profile_onnxruntime(path, manifest.preprocessing, images, threads)]
        if openvino:
            try:
                result.profiles[role].append(profile_openvino(path, manifest.preprocessing, images, threads))
            except Exception as exc:  # OpenVINO's own failure to run or count it: a note, the onnxruntime profile stays
                result.notes.append(f"openvino-cpu cannot profile {path.name}: {_said(exc)}")


def _score_model(
    run_dir: Path, manifest: Any, role: str, images: np.ndarray, labels: np.ndarray, chosen: dict[str, str | None],
    threads: int, isa: list[str], notes: list[str],
) -> tuple[ModelResult, dict[str, tuple[Loaded, np.ndarray]]]:  # fmt: skip
    """One model file on every usable target and precision: its ModelResult (points without speeds yet), and per
    point key its loaded model and which test images it gets right."""
    entry = manifest.models[role]
    path = model_file(run_dir, role, entry)
    prep, classes = manifest.preprocessing, manifest.dataset.classes
    kind = roles.format_of(role)
    model = ModelResult(
        role=role, file=entry.onnx, format=roles.FORMATS[kind] if kind else "FP32", source=roles.source_of(role) if kind else None,
        baseline=None if roles.is_teacher(role) or roles.kind_of(role) == "baseline" else roles.sibling(role, "baseline"),
        **_size(path.path), recorded_correct=entry.test_correct, agrees_with_manifest=True,
    )  # fmt: skip
    scored: dict[str, tuple[Loaded, np.ndarray]] = {}
    for name, target in TARGETS.items():
        if chosen[name]:
            continue
        for precision in target.precisions(isa):
            try:
                run = target.load(path, threads, precision)
                if name == REFERENCE:
                    check_model(run.details["session"], prep, classes, path)
                if any(p.target == name and p.precision == run.precision for p in model.points):
                    continue  # OpenVINO's default is f32 on this CPU: the same point twice
                logits = np.concatenate([run.run(normalize(images[i : i + ACCURACY_BATCH], prep)) for i in range(0, len(images), ACCURACY_BATCH)])
            except Exception as exc:  # any runtime's own error (a compile failure, std::bad_alloc): one note, and on
                if name == REFERENCE:
                    raise
                notes.append(f"{name} cannot run {entry.onnx}: {_said(exc)}")
                break  # the file itself: no other precision of this target reads it either
            metrics = classification_metrics(logits, labels, classes)
            point = PointResult(role, entry.onnx, name, run.precision, metrics["accuracy"], metrics["correct"], 1.0, {}, 0.0, metrics)
            scored[point.key] = (run, logits.argmax(axis=1) == labels)
            run.details["predictions"] = logits.argmax(axis=1)
            model.points.append(point)
    recorded = entry.test_correct  # the ONNX file may flip an image sitting exactly on a decision boundary: one is tolerated
    model.agrees_with_manifest = recorded is None or abs(model.reference.correct - recorded) <= 1
    return model, scored


def _said(exc: BaseException) -> str:
    """A runtime's failure in a few words: a KdcError's own line, or the exception's type and first line."""
    if isinstance(exc, KdcError):
        return str(exc)
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


def _size(path: Path) -> dict[str, Any]:
    size = onnx_size(path)
    return {"parameters": size["parameters"], "file_mb": size["file_mb"], "macs": size["macs"]}


def _reference_agreement(models: dict[str, ModelResult], loaded: dict[str, Loaded], images: np.ndarray, prep: Any) -> None:
    """Each point's top-1 agreement with the FP32 file it stands for (its source, or itself) on onnxruntime-cpu."""
    for model in models.values():
        fp32 = models.get(model.source) if model.source else model
        if fp32 is None:
            fp32 = model
        reference = loaded[fp32.reference.key].details["predictions"]
        for point in model.points:
            point.agreement = float((loaded[point.key].details["predictions"] == reference).mean())


def _time_points(
    models: dict[str, ModelResult], loaded: dict[str, Loaded], images: np.ndarray, prep: Any, batch: int, quick: bool,
    notes: list[str],
) -> None:  # fmt: skip
    """Batch-1 latency and throughput at batch of every point, the CPU ones interleaved together, the CUDA ones apart.
    A point other than the reference whose runtime cannot take the timing batches (a compile failure for a new
    shape) is dropped with a note; the others are timed."""
    one = normalize(images[:1], prep)
    many = normalize(tile_batch(images, batch), prep)
    runs, min_seconds = (20, 0.2) if quick else (200, 2.0)
    single = dict(warmup=5 if quick else 20, runs=runs, min_seconds=min_seconds)
    bulk = dict(warmup=2 if quick else 5, runs=max(5, runs // 10), min_seconds=min_seconds / 2)
    callers: dict[str, tuple[Any, Any]] = {}
    for model in models.values():
        for point in list(model.points):
            try:
                callers[point.key] = (loaded[point.key].caller(one), loaded[point.key].caller(many))
            except Exception as exc:
                if point.target == REFERENCE:
                    raise
                notes.append(f"{point.target} cannot time {point.file} at {point.precision}: {_said(exc)}")
                model.points.remove(point)
    points = {p.key: p for m in models.values() for p in m.points}
    for device in ("cpu", "cuda"):
        mine = {k: p for k, p in points.items() if TARGETS[p.target].target.device == device}
        if not mine:
            continue
        first = interleaved_latency({k: callers[k][0] for k in mine}, **single)
        throughput = interleaved_latency({k: callers[k][1] for k in mine}, **bulk)
        on_device = {k: loaded[k].details["device_caller"] for k in mine if "device_caller" in loaded[k].details}
        device_first = interleaved_latency({k: call(one) for k, call in on_device.items()}, **single) if on_device else {}
        for key, point in mine.items():
            point.batch1 = first[key]
            point.images_per_s = batch / (throughput[key]["p50_ms"] / 1e3)
            point.device_batch1 = device_first.get(key)


def _check_settings(**settings: int) -> None:
    for name, value in settings.items():
        if value < 1:
            raise KdcError(f"--{name} must be at least 1, got {value}")


def _machine_record(before: dict[str, Any], after: dict[str, Any], threads: int, used: list[str]) -> dict[str, Any]:
    """The machine before timing, how busy it was before and after, whether that was too busy to trust, the runtimes."""
    # Measured while this process sleeps, before and after timing: other processes' share of the CPU.
    shares = [m["cpu_busy_fraction"] for m in (before, after) if m["cpu_busy_fraction"] is not None]
    busy = max(shares) > BUSY_THRESHOLD if shares else before["load_average_1m"] > 0.5 * before["cores"]
    return {
        **before,
        "load_average_1m_after": after["load_average_1m"],
        "cpu_busy_fraction_after": after["cpu_busy_fraction"],
        "busy": busy,
        "threads": threads,
        "runtimes": runtime_versions(used),  # only the runtimes used: never a version beside "not installed"
    }


def points_of(result: BenchmarkResult, correct: dict[str, np.ndarray] | None = None) -> list[Point]:
    """The frontier's points: every (file, target, precision) of a benchmark result."""
    out = []
    for role, model in result.models.items():
        for p in model.points:
            source = result.models.get(model.source) if model.source else None
            twin = next((q for q in source.points if q.target == p.target and q.precision in (p.precision, "native")), None) if source else None
            baseline = result.models.get(model.baseline) if model.baseline else None
            out.append(Point(
                name=p.key, file=p.file, accuracy=p.accuracy, p50_ms=p.p50_ms, mb=model.file_mb,
                source=twin.key if twin else None, baseline=baseline.reference.key if baseline else None,
                role=role, target=p.target, precision=p.precision, correct=None if correct is None else correct[p.key],
                sensitivity=p.metrics.get("sensitivity"), specificity=p.metrics.get("specificity"),
                ram_mb=p.footprint["peak_mb"] if p.footprint else None,
            ))  # fmt: skip
    return out


def _frontier(result: BenchmarkResult, correct: dict[str, np.ndarray], budget: Budget) -> None:
    """Mark the Pareto sets (accuracy vs latency, vs size) over every point and, under a budget, recommend one."""
    points = points_of(result, correct)
    fast, small = pareto(points, "p50_ms"), pareto(points, "mb")
    for p in result.points():
        p.pareto = {"latency": p.key in fast, "size": p.key in small}
    if budget.given and roles.TEACHER in result.models:
        m = result.machine
        isa = f" ({', '.join(m['isa'])})" if m.get("isa") else ""
        where = f"{m['cpu']}{isa}, {result.settings['threads']} thread(s)"
        result.recommendation = recommend(points, roles.TEACHER, budget, where)
        chosen = result.recommendation.get("model")
        if chosen:
            result.recommendation["words"] += gain_meaning(chosen, result.attribution)


def gain_meaning(chosen: str, attribution: dict[str, str] | str | None) -> str:
    """What the recommended model's gain over its baseline means, as a sentence to append ('' for a teacher or a
    baseline): a control's is regularisation by construction (it never saw the teacher); a distilled student's (or
    its INT8 / FP16 file's) is the run's verdict on distillation for that student."""
    kind = roles.kind_of(chosen)
    if kind == "control":
        return (" It is the label-smoothing control, trained without the teacher: what it gained over the baseline is "
                "regularisation, not the teacher's knowledge.")  # fmt: skip
    said = attribution.get(roles.student_of(chosen) or "") if isinstance(attribution, dict) else attribution
    if roles.is_teacher(chosen) or kind == "baseline" or not said:
        return ""
    return f" What its gain over the baseline means: {said}."  # regularisation, or the teacher's


def _int8_verdict(models: dict[str, ModelResult], role: str, batch: int) -> Int8Verdict:
    """An INT8 student against the FP32 one it was made from, on onnxruntime-cpu as timed here."""

    def side(model: ModelResult) -> dict[str, float]:
        point = model.reference
        return {"p50_ms": point.p50_ms, "images_per_s": point.images_per_s, "bytes": model.file_mb * 1e6}

    return int8_verdict(side(models[roles.source_of(role)]), side(models[role]), batch)


def ratios_vs_teacher(result: BenchmarkResult, point: PointResult) -> dict[str, float]:
    """A point against the teacher on the same target and precision (onnxruntime-cpu where the teacher has none)."""
    teacher = result.models.get(roles.TEACHER)
    if teacher is None:
        return {}
    twin = next((q for q in teacher.points if q.target == point.target and q.precision == point.precision), teacher.reference)
    model = result.models[point.role]
    return {
        "smaller_x": teacher.file_mb / model.file_mb,
        "faster_x": twin.p50_ms / point.p50_ms,
        "accuracy_change_points": 100 * (point.accuracy - twin.accuracy),
        "against": twin.key,
    }

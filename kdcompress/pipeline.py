"""`kdc compress` as a library call: data -> models -> objectives -> fit -> export -> manifest."""

from __future__ import annotations

import errno
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from kdcompress import losses
from kdcompress.config import CompressConfig
from kdcompress.data import materialize
from kdcompress.distributed import broadcast_object
from kdcompress.errors import KdcError
from kdcompress.fair import Prepared, control_smoothing, fair_start, prepare, teacher_train_logits
from kdcompress.files import REPLACED_PREFIX, STAGING_PREFIX, remove_stale, write_json_atomic
from kdcompress.manifest import MANIFEST, DatasetInfo, Manifest, ModelEntry, environment, write_manifest
from kdcompress.reporter import NullReporter, Reporter
from kdcompress.stats import attribution, compare_models
from kdcompress.teacher import load_or_train_teacher, record_teacher, recording_fits

if TYPE_CHECKING:
    from kdcompress.export import Exports

CALIBRATION_IMAGES = 512  # training images kept for INT8 calibration (kdc quantize)


@dataclass
class CompressResult:
    """Where the run was written and its manifest (None on the ranks other than 0, which write nothing)."""

    run_dir: Path
    manifest: Manifest | None


@dataclass
class Phases:
    """Seconds spent in each phase of one compress call, in the order they ran (the manifest's training.seconds).

    start and data: the imports (torch, timm), then loading and checking the images; teacher: trained, or read
    from the cache; students: their training, the checkpoints, and the exports started in worker processes
    (export.Exports); test and exports: the test scores and the exports, finished or made here; INT8 (--int8);
    total: the whole call from its start.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - began, 2)

    def record(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.started, 2)}

    @staticmethod
    def words(record: dict[str, float]) -> str:
        """One line for a record: the total, then each phase."""
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in record.items() if name != "total")
        return f"took {record['total']:.0f} s: {phases}"


def compress(config: CompressConfig, reporter: Reporter | None = None) -> CompressResult:
    """Train teacher, baseline and distilled student; export all three; write the run folder.

    Under torchrun every rank trains (DDP) and rank 0 alone tests, exports and writes the run folder.
    """
    reporter = reporter or NullReporter()
    phases = Phases()
    if config.out:
        check_out(config.out)  # before anything is trained
    swept = None  # --from-sweep: the sweep's results.json, read once
    if config.from_sweep:
        from kdcompress.chosen import check_same_data, describe, sweep_results, with_sweep

        swept = sweep_results(config.from_sweep)
        config = with_sweep(config, swept)
        reporter.info(describe(config, swept))
    with phases("start and data"):
        run = prepare(config, reporter)
    cfg, data = run.cfg, run.data
    if swept is not None:
        check_same_data(cfg, swept, data.fingerprint())
    counts = data.counts()
    where = f"{run.world.size} processes on {run.device}" if run.world.size > 1 else run.device
    reporter.info(
        f"{data.name}: {len(data.classes)} classes, {counts['train']} train / {counts['val']} val / "
        f"{counts['test']} test images at {data.image_size}px, {data.channels} channel(s), on {where}"
        f"{', streamed from disk' if data.streamed else ''}"
    )
    folder = _prepare_run_dir(cfg) if run.world.main else None
    final_dir = Path(broadcast_object(str(folder.final) if folder else None))
    if folder is None:  # a rank other than 0: it trains its share and writes nothing
        _train_all(run, reporter, phases, None)
        return CompressResult(final_dir, None)
    from kdcompress.export import Exports

    staging = folder.staging
    try:
        with Exports(staging, run.prep, data.test_x) as exports:
            models, records, training = _train_all(run, reporter, phases, exports)
            with phases("test and exports"):
                manifest = _finish(run, models, records, training, staging, final_dir.name, reporter, exports)
            if exports.fallback:
                reporter.warn(exports.fallback)
                manifest.warnings.append(exports.fallback)
        if cfg.int8:
            from kdcompress.quantize import quantize_run

            with phases("INT8"):
                manifest.models["int8"] = quantize_run(staging, reporter=reporter)
        manifest.training["seconds"] = seconds = phases.record()
        write_manifest(staging, manifest)
        final_dir = _publish(folder, manifest, reporter)
        reporter.info(Phases.words(seconds))  # the figures the manifest holds
    except BaseException:
        _discard(folder)
        raise
    return CompressResult(final_dir, manifest)


def _train_all(
    run: Prepared, reporter: Reporter, phases: Phases, exports: Exports | None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """Teacher (trained or reused), then baseline and distilled student from one fair start, each timed in phases.

    Each model goes to `exports` (rank 0 only) as soon as it is final. Returns the models, their training
    records, and how the training ran (the manifest's `training`).
    """
    cfg = run.cfg
    with phases("teacher"):
        teacher, teacher_record = load_or_train_teacher(cfg, run.data, run.prep, run.settings, reporter)
    with phases("students"):
        done = _exporter(run, reporter, exports)
        done("teacher", teacher)
        return _train_students(run, reporter, teacher, teacher_record, done)


def _exporter(run: Prepared, reporter: Reporter, exports: Exports | None) -> Callable[[str, Any], None]:
    """What to do with each model once it is trained: save its checkpoint and start its export (rank 0)."""

    def done(role: str, model: Any) -> None:
        if exports is None:
            return
        if exports.background:
            reporter.info(f"exporting {role} to ONNX in a worker process, beside the training")
        exports.submit(role, model, _checkpoint_meta(run, role))

    return done


def _checkpoint_meta(run: Prepared, role: str) -> dict[str, Any]:
    """What a checkpoint needs besides its weights to rebuild the network (models.save_checkpoint)."""
    architecture = run.cfg.teacher if role == "teacher" else run.cfg.student
    return {"model": architecture, "classes": run.data.classes, "in_chans": run.data.channels}


def _train_students(
    run: Prepared, reporter: Reporter, teacher: Any, teacher_record: dict[str, Any], done: Callable[[str, Any], None]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """Baseline, distilled student and (with --control) the label-smoothing control, from one fair start."""
    from kdcompress.accel import describe_precision, step_mode
    from kdcompress.objectives import LiveTeacher
    from kdcompress.train import fit

    cfg = run.cfg
    start = fair_start(run, cfg.seed, teacher)

    records = {"teacher": teacher_record}
    baseline = start.baseline()
    reporter.info(f"baseline: {cfg.student}, {baseline.describe()}")
    result = fit(baseline, run.data, run.prep, start.settings, reporter, "baseline")
    records["baseline"] = {"objective": baseline.describe(), **result.record()}
    done("baseline", baseline.student)

    distillation = start.distilled(_teacher_outputs(run, start, teacher, reporter), cfg.temperature, cfg.alpha, cfg.beta)
    reporter.info(f"distilled student: {cfg.student}, {distillation.describe()}")
    result = fit(distillation, run.data, run.prep, start.settings, reporter, "distilled")
    records["student"] = {"objective": distillation.describe(), **result.record()}
    done("student", distillation.student)
    models = {"teacher": teacher, "baseline": baseline.student, "student": distillation.student}

    if cfg.control == "label-smoothing":
        matched = control_smoothing(run, teacher_train_logits(run, teacher), cfg.temperature, cfg.alpha)
        control = start.control(matched["smoothing"])
        reporter.info(
            f"label-smoothing control: {cfg.student}, {control.describe()} (alpha {cfg.alpha:g} x the teacher's mass "
            f"off the true class at T={cfg.temperature:g}, {matched['teacher_off_true_mass']:.3f})"
        )
        result = fit(control, run.data, run.prep, start.settings, reporter, "control")
        records["control"] = {"objective": control.describe(), "matched": matched, **result.record()}
        done("control", control.student)
        models["control"] = control.student
    mode = step_mode(cfg.compile, run.device, run.world.size)
    training = {
        "device": run.device,
        "precision": describe_precision(run.device, run.settings.precision),
        "compile": f"{cfg.compile} ({mode})",
        "teacher_outputs": "live" if isinstance(distillation.teacher, LiveTeacher) else "recorded once, then replayed",
        "data": "streamed from disk (DataLoader workers)" if run.data.streamed else "in memory",
        **parallel_record(run),
    }
    return models, records, training


def _teacher_outputs(run: Prepared, start: Any, teacher: Any, reporter: Reporter) -> Any:
    """What the distilled student learns from: the teacher itself (run live on each batch), or its recorded outputs.

    On CPU, in one process, the outputs for every view are recorded once and replayed where they fit in memory
    (teacher.recording_fits): the same targets, bit for bit, without the teacher's forward inside every training
    step. Measured on cifar3 (2-core Intel Xeon): a live-teacher distilled student took 3.2x a baseline, a replayed one
    1.11x plus one recording pass of 1.6x. On CUDA the teacher runs live: inside the step's CUDA graph it cost nothing
    measurable (H200, cifar3: distilled 2.06 s, baseline 2.16 s), while a recording pass would.
    """
    features = run.cfg.beta > 0
    if run.device != "cpu" or run.world.size > 1 or not recording_fits(teacher, run.data, start.settings, features):
        return teacher
    return record_teacher(teacher, run.data, run.prep, start.settings, features, reporter)


def parallel_record(run: Prepared) -> dict[str, Any]:
    """How the processes shared the training, for the manifest (nothing for one process)."""
    size = run.world.size
    if size == 1:
        return {}
    return {
        "processes": size,
        "batch_per_process": run.settings.batch_size // size,
        "batchnorm": "synchronised across processes (SyncBatchNorm)"
        if run.device == "cuda"
        else "per process over its share of each batch (torch's SyncBatchNorm needs GPUs)",
    }


def _finish(
    run: Prepared,
    models: dict[str, Any],
    records: dict[str, dict[str, Any]],
    training: dict[str, Any],
    staging: Path,
    run_name: str,
    reporter: Reporter,
    exports: Exports,
) -> Manifest:
    """Test, finish the exports, save data samples, then write the manifest last."""
    cfg, data = run.cfg, run.data
    _save_samples(run, staging)
    history = {role: records[role].pop("history", []) for role in models}
    entries, correct = {}, {}
    for role, model in models.items():
        entries[role], correct[role] = _export_model(run, role, model, exports, reporter)
        entries[role].details.update(records[role])
    write_json_atomic(staging / "history.json", history)
    comparisons = compare_models(correct)

    warnings = []
    if entries["teacher"].test_accuracy < entries["baseline"].test_accuracy:
        warnings.append(
            f"the teacher ({entries['teacher'].test_accuracy:.1%}) scores below the baseline student "
            f"({entries['baseline'].test_accuracy:.1%}): distilling from it can only pass on its mistakes"
        )
    manifest = Manifest(
        run=run_name,
        dataset=DatasetInfo(data.name, data.classes, data.counts(), data.source, data.fingerprint()),
        preprocessing=run.prep,
        models=entries,
        files={"test_set": "test_set.npz", "calibration_set": "calibration.npz", "history": "history.json"},
        warnings=warnings,
        training=training,
        details={
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "objective": {
                "formula": losses.FORMULA,
                "notes": losses.FORMULA_NOTES,
                "resolved": records["student"]["objective"],
                "temperature": cfg.temperature,
                "alpha": cfg.alpha,
                "beta": cfg.beta,
            },
            "comparisons": comparisons,
            "attribution": attribution(comparisons),
            "config": cfg.to_dict(),
            "device": run.device,
            "environment": environment(),
        },
    )
    write_manifest(staging, manifest)
    return manifest


def _save_samples(run: Prepared, staging: Path) -> None:
    """The test images as fed to the models, and CALIBRATION_IMAGES training images for INT8 calibration."""
    data = run.data
    np.savez_compressed(staging / "test_set.npz", images=materialize(data.test_x), labels=data.test_y)
    rng = np.random.default_rng(run.cfg.seed)
    pick = np.sort(rng.choice(len(data.train_y), size=min(CALIBRATION_IMAGES, len(data.train_y)), replace=False))
    np.savez_compressed(staging / "calibration.npz", images=data.train_x[pick], labels=data.train_y[pick])


def _export_model(run: Prepared, role: str, model: Any, exports: Exports, reporter: Reporter) -> tuple[ModelEntry, np.ndarray]:
    """Score one model on the test split and finish its ONNX export (checked against PyTorch).

    Returns its manifest entry and which test images it gets right (for the verdicts).
    """
    from kdcompress.models import count_parameters
    from kdcompress.train import predict_logits

    data = run.data
    correct = predict_logits(model, data.test_x, run.prep, run.device).argmax(axis=1) == data.test_y
    per_class = {
        name: float(correct[data.test_y == i].mean()) if (data.test_y == i).any() else None
        for i, name in enumerate(data.classes)
    }
    if not exports.background:
        reporter.info(f"exporting {role} to ONNX and checking it against PyTorch")
    parity = exports.parity(role, model)
    onnx_path = exports.folder / f"{role}.onnx"
    entry = ModelEntry(
        architecture=_checkpoint_meta(run, role)["model"],
        onnx=onnx_path.name,
        parameters=count_parameters(model),
        onnx_bytes=onnx_path.stat().st_size,
        test_accuracy=float(correct.mean()),
        test_correct=int(correct.sum()),
        details={"checkpoint": f"checkpoints/{role}.pt", "per_class_accuracy": per_class, "export": parity},
    )
    return entry, correct


def check_out(out: str | Path) -> Path:
    """--out may name a new folder, an empty one, or an earlier run (replaced at the end); nothing else.

    Refused before any training: an existing file, a folder that holds anything but a finished run
    (it would be deleted), and the current folder or one above it (it cannot be replaced).
    """
    final = Path(out)
    if final.exists() and not final.is_dir():
        raise KdcError(f"--out {final} exists and is not a folder: pick a new folder name")
    if final.is_dir():
        here = Path.cwd().resolve()
        if final.resolve() == here or final.resolve() in here.parents:
            raise KdcError(f"--out {final} is the current folder or holds it: pick a new sub-folder, such as --out {final / 'run'}")
        if any(final.iterdir()) and not (final / MANIFEST).is_file():
            raise KdcError(
                f"--out {final} is a folder that is not a kdc run (no {MANIFEST}), and it would be replaced: "
                f"pick a new or empty folder"
            )
    return final


@dataclass
class RunFolder:
    """Where a run is built (staging) and published (final), and what this process may replace there.

    final is reserved before training: an empty folder this process made (reserved), an empty one the user
    gave as --out, or an earlier run at --out, whose manifest's identity (replaces) is the one run this
    process was asked to replace.
    """

    final: Path
    staging: Path
    reserved: bool = False
    replaces: tuple[int, int] | None = None


def _identity(run_dir: Path) -> tuple[int, int] | None:
    """What tells one finished run from another written at the same path: its manifest's inode and mtime."""
    try:
        info = (run_dir / MANIFEST).stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns)


def reserve(root: Path, name: str) -> Path:
    """Make a new, empty folder root/name, or root/name-2, -3... when that name is taken: atomic (mkdir)."""
    root.mkdir(parents=True, exist_ok=True)
    candidate, suffix = root / name, 2
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate = root / f"{name}-{suffix}"
            suffix += 1


def _prepare_run_dir(cfg: CompressConfig) -> RunFolder:
    """Reserve the final run folder, and make the staging folder the run is built in (renamed into place at the end).

    Two runs started in the same second get two folders: the name is taken by mkdir, which only one can win.
    """
    try:
        if cfg.out:
            final = check_out(cfg.out)
            replaces = _identity(final)
            reserved = not final.exists()
            if reserved:
                final.parent.mkdir(parents=True, exist_ok=True)
                try:
                    final.mkdir()
                except FileExistsError:  # made by another run since check_out: this one must not fill it
                    final, replaces = reserve(final.parent, final.name), None
        else:
            final = reserve(Path(cfg.artifacts), f"{cfg.dataset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
            reserved, replaces = True, None
        remove_stale(final.parent)
        staging = final.parent / f"{STAGING_PREFIX}{final.name}.{os.getpid()}"
        staging.mkdir(parents=True)
    except OSError as exc:
        where = cfg.out or cfg.artifacts
        raise KdcError(f"cannot create the run folder in {where} ({exc.strerror or exc}): pick a writable folder") from None
    return RunFolder(final, staging, reserved, replaces)


def _discard(folder: RunFolder) -> None:
    """An unfinished run: its staging folder goes, and so does the final folder this process reserved (still empty)."""
    shutil.rmtree(folder.staging, ignore_errors=True)
    if folder.reserved:
        try:
            folder.final.rmdir()  # only an empty folder: never a run published there by another process
        except OSError:
            pass


def _publish(folder: RunFolder, manifest: Manifest, reporter: Reporter) -> Path:
    """Move the finished run into place and return where it went.

    Onto its reserved empty folder, or over the earlier run at --out that it was asked to replace (removed only
    now). A finished run it was not asked to replace (another process's, written there meanwhile) is never
    replaced: this run goes to a new folder beside it, named with a suffix, and the manifest says so.
    """
    final = folder.final
    while True:
        try:
            if folder.replaces is not None and _identity(final) == folder.replaces:
                old = final.parent / f"{REPLACED_PREFIX}{final.name}.{os.getpid()}"
                os.replace(final, old)
                os.replace(folder.staging, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(folder.staging, final)  # onto an empty folder, atomically; refused when it holds anything
            return final
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
        taken, final = final, reserve(final.parent, final.name)
        folder.final, folder.reserved, folder.replaces = final, True, None
        manifest.run = final.name
        note = f"{taken} was filled by another run while this one trained; this run was written to {final} instead"
        manifest.warnings.append(note)
        write_manifest(folder.staging, manifest)
        reporter.warn(note)

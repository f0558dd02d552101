"""`kdc compress` as a library call: data -> models -> objectives -> fit -> export -> manifest."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from kdcompress.core import roles
from kdcompress.core.errors import KdcError
from kdcompress.core.files import write_json_atomic, write_yaml_atomic
from kdcompress.core.reporter import NullReporter, Reporter
from kdcompress.core.roles import TEACHER, pruned_ratio
from kdcompress.core.stats import attributions, compare_models
from kdcompress.data.dataset import batches
from kdcompress.deploy.manifest import DatasetInfo, Manifest, write_manifest
from kdcompress.runs.environment import Phases, busy_warning, environment
from kdcompress.runs.model_files import export_model, exporter, model_warnings, save_samples
from kdcompress.runs.rundir import check_out, discard_run, prepare_run_dir, publish_run
from kdcompress.train import losses
from kdcompress.train.collectives import broadcast_object
from kdcompress.train.config import CompressConfig
from kdcompress.train.fair import Prepared, fair_start, prepare
from kdcompress.train.teacher import load_or_train_teacher

if TYPE_CHECKING:
    from kdcompress.train.export import Exports

CONFIG_FILE = "config.yaml"  # the resolved settings: kdc compress --config RUN/config.yaml runs them again


@dataclass
class CompressResult:
    """Where the run was written and its manifest (None on the ranks other than 0, which write nothing)."""

    run_dir: Path
    manifest: Manifest | None


def compress(config: CompressConfig, reporter: Reporter | None = None, spawn_safe: bool = False) -> CompressResult:
    """Train teacher, baseline and distilled student; export all three; write the run folder.

    spawn_safe: the program's main module is guarded by `if __name__ == "__main__":` (the kdc command is), so
    exports may run in spawned worker processes beside the training on machines with many cores.

    Under torchrun every rank trains (DDP) and rank 0 alone tests, exports and writes the run folder.
    """
    reporter = reporter or NullReporter()
    phases = Phases()
    busy = busy_warning()
    if busy:
        reporter.warn(busy)
    if config.out:
        check_out(config.out)  # before anything is trained
    swept = None  # --from-sweep: the sweep's results.json, read once
    if config.from_sweep:
        from kdcompress.runs.from_sweep import check_same_data, describe, sweep_results, with_sweep

        swept = sweep_results(config.from_sweep)
        config = with_sweep(config, swept)
        reporter.info(describe(config, swept))
    with phases("start and data"):
        run = prepare(config, reporter)
    if busy:
        run.warnings.insert(0, busy)
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
    # Imported before the run folder exists: nothing slow may stand between making it and the try that discards it
    # (a SIGTERM there left the staging folder behind).
    from kdcompress.train.export import Exports, export_workers

    folder = prepare_run_dir(cfg) if run.world.main else None
    try:
        final_dir = Path(broadcast_object(str(folder.final) if folder else None))
        if folder is None:  # a rank other than 0: it trains its share and writes nothing
            _train_all(run, reporter, phases, None)
            return CompressResult(final_dir, None)
        staging = folder.staging
        with Exports(staging, run.prep, data.test_x, export_workers(spawn_safe)) as exports:
            models, records, training, test_logits = _train_all(run, reporter, phases, exports)
            with phases("test and exports"):
                manifest = _finish(run, models, records, training, test_logits, staging, final_dir.name, reporter, exports)
            if exports.fallback:
                reporter.warn(exports.fallback)
                manifest.warnings.append(exports.fallback)
        if cfg.int8:
            from kdcompress.deploy.quantize import quantize_run

            with phases("INT8"):
                manifest.models.update(quantize_run(staging, reporter=reporter))
        manifest.training["seconds"] = seconds = phases.record()
        write_manifest(staging, manifest)
        final_dir = publish_run(folder, manifest, reporter)
        reporter.info(Phases.words(seconds))  # the figures the manifest holds
    except BaseException:
        if folder is not None:
            discard_run(folder)
        raise
    return CompressResult(final_dir, manifest)


def _train_all(
    run: Prepared, reporter: Reporter, phases: Phases, exports: Exports | None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Teacher (trained or reused), then baseline and distilled student from one fair start, each timed in phases.

    Each model goes to `exports` (rank 0 only) as soon as it is final. Returns the models, their training
    records, how the training ran (the manifest's `training`), and each student's test logits from its training.
    """
    cfg = run.cfg
    with phases("teacher"):
        teacher, teacher_record = load_or_train_teacher(cfg, run.data, run.prep, run.settings, reporter)
    if cfg.prune_to_ms is not None:
        with phases("prune to ms"):
            _prune_to_ms(run, teacher, teacher_record, reporter)
    with phases("students"):
        done = exporter(run, reporter, exports)
        done("teacher", teacher)
        return _train_students(run, reporter, teacher, teacher_record, done)


def _prune_to_ms(run: Prepared, teacher: Any, teacher_record: dict[str, Any], reporter: Reporter) -> None:
    """--prune-to-ms: the ratio whose pruned teacher meets the latency here (rank 0 measures, every rank gets it),
    added to --prune; what was measured goes into the teacher's record."""
    from dataclasses import replace

    from kdcompress.runs.prune_target import ratio_for_latency

    cfg = run.cfg
    found = ratio_for_latency(teacher, cfg.prune_to_ms, run.prep, next(batches(run.data.val_x, 8)), reporter) if run.world.main else None
    ratio, words = broadcast_object(found)
    reporter.info(f"--prune-to-ms {cfg.prune_to_ms:g}: {words}")
    teacher_record["prune_to_ms"] = {"target_ms": cfg.prune_to_ms, "ratio": ratio, "words": words}
    if ratio is not None and ratio not in cfg.prune_ratios:
        run.cfg = replace(cfg, prune=",".join(f"{r:g}" for r in [*cfg.prune_ratios, ratio]))


def _train_students(
    run: Prepared, reporter: Reporter, teacher: Any, teacher_record: dict[str, Any], done: Callable[[str, Any], None]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """For every student: baseline, distilled student and (with --control) the label-smoothing control, from its fair start.

    Each is one training of the student's seed (train.seed, the unit kdc sweep trains through too). What they learn
    from the teacher (its outputs, recorded once where seed.teacher_outputs' rule says so, and the control's matched
    smoothing) is made once, for all students (seed.Lessons).
    """
    from kdcompress.train.accel import describe_precision, step_mode
    from kdcompress.train.seed import ROLE_OF, Lessons, objective, train_one, trainings

    cfg = run.cfg
    models: dict[str, Any] = {TEACHER: teacher}
    records: dict[str, dict[str, Any]] = {TEACHER: teacher_record}
    test_logits: dict[str, Any] = {}
    lessons = Lessons(run, teacher, reporter)
    trained_students = []
    for architecture in cfg.students:
        try:
            start = fair_start(run, cfg.seed, teacher, architecture)
        except KdcError as exc:  # a pruned student Torch-Pruning cannot make: said, and the other students go on
            if pruned_ratio(architecture) is None:
                raise
            said = f"{architecture} left out: {exc}"
            reporter.warn(said)
            run.warnings.append(said)
            continue
        trained_students.append(architecture)
        for training, extra in trainings(cfg, lessons):
            name = roles.role(ROLE_OF[training.kind], architecture if cfg.several else None)
            learns_from = lessons.outputs(start.settings, cfg.beta > 0, len(cfg.students)) if training.kind == "distilled" else teacher
            made = objective(start, training, learns_from)
            _announce(run, start, name, made, extra, reporter)
            trained = train_one(run, made, start.settings, roles.label(name), reporter, score=run.world.main)
            stem = {"stem_stride": start.stem_stride} if start.stem_stride else {}  # --student-stem auto at small inputs
            records[name] = {"objective": made.describe(), **stem, **extra, **trained.result.record()}
            done(name, made.student)
            models[name] = made.student
            test_logits[name] = trained.logits
    mode = step_mode(cfg.compile, run.device, run.world.size)
    training = {
        "device": run.device,
        "precision": describe_precision(run.device, run.settings.precision),
        "compile": f"{cfg.compile} ({mode})",
        "teacher_outputs": "live" if lessons.live or not lessons.recorded else "recorded once, then replayed",
        "data": "streamed from disk (DataLoader workers)" if run.data.streamed else "in memory",
        **parallel_record(run),
    }
    if cfg.several:
        training["students"] = trained_students
    return models, records, training, test_logits  # the trainings' own test scores, reused by _finish


ANNOUNCED = {"baseline": "baseline", "student": "distilled student", "control": "label-smoothing control"}


def _announce(run: Prepared, start: Any, name: str, objective: Any, extra: dict[str, Any], reporter: Reporter) -> None:
    """Say what is about to be trained."""
    cfg = run.cfg
    architecture = roles.student_of(name) or cfg.students[0]
    ratio = pruned_ratio(architecture)
    if ratio is not None:
        architecture = f"the teacher {cfg.teacher} with {ratio:.0%} of its channels pruned (Torch-Pruning, L2 magnitude)"
    stem = f", stride-1 stem for {run.data.image_size} px inputs" if start.stem_stride else ""
    words = f"{ANNOUNCED[roles.kind_of(name)]}: {architecture}{stem}, {objective.describe()}"
    if "matched" in extra:
        words += (
            f" (alpha {cfg.alpha:g} x the teacher's mass off the true class at T={cfg.temperature:g}, "
            f"{extra['matched']['teacher_off_true_mass']:.3f})"
        )
    reporter.info(words)


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
    test_logits: dict[str, Any],
    staging: Path,
    run_name: str,
    reporter: Reporter,
    exports: Exports,
) -> Manifest:
    """Test, finish the exports, save data samples, then write the manifest last."""
    cfg, data = run.cfg, run.data
    save_samples(run, staging)
    history = {role: records[role].pop("history", []) for role in models}
    entries, correct = {}, {}
    for role, model in models.items():
        entries[role], correct[role] = export_model(run, role, model, exports, reporter, test_logits.get(role), run_name)
        entries[role].details.update(records[role])
    write_json_atomic(staging / "history.json", history)
    comparisons = compare_models(correct)

    warnings = [*run.warnings, *model_warnings(entries)]
    manifest = Manifest(
        run=run_name,
        dataset=DatasetInfo(data.name, data.classes, data.counts(), data.source, data.fingerprint(), list(data.source_sizes),
                            list(data.source_channels)),
        preprocessing=run.prep,
        models=entries,
        files={"test_set": "test_set.npz", "calibration_set": "calibration.npz", "validation_set": "validation.npz",
               "history": "history.json", "config": CONFIG_FILE},  # fmt: skip
        warnings=warnings,
        training=training,
        details={
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "objective": {
                "formula": losses.FORMULA,
                "notes": losses.FORMULA_NOTES,
                "resolved": next(records[r]["objective"] for r in records if roles.kind_of(r) == "student"),
                "temperature": cfg.temperature,
                "alpha": cfg.alpha,
                "beta": cfg.beta,
                "kd_loss": cfg.kd_loss,
            },
            "comparisons": comparisons,
            "attribution": attributions(comparisons, list(correct), data.unlabeled_source or None),
            "config": cfg.to_dict(),
            "device": run.device,
            "environment": environment(),
        },
    )
    header = f"kdc compress settings of run {run_name}, resolved.\nkdc compress --config {CONFIG_FILE} runs them again, into a new run folder."
    write_yaml_atomic(staging / CONFIG_FILE, cfg.to_options(), header)
    write_manifest(staging, manifest)
    return manifest

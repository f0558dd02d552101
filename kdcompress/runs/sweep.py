"""`kdc sweep` as a library call: a grid of distillation settings against the baseline, over seeds.

One teacher serves the whole sweep (trained once, or reused from `kdc compress`'s cache). For
each seed the baseline is trained once, the teacher's outputs are recorded once for every
augmented batch that seed's runs will see, and each grid point trains one distilled student from
the baseline's initial weights against those recorded outputs. Students of one seed differ only
in their objective, and a sweep of N students costs about N baseline trainings.

The sweep folder is resumable: finished trainings are never redone.
  sweep.json          the settings a resumed sweep must share, and the teacher's record
  runs/<name>.json    one finished training each
  results.json        every run and each grid point's comparison with the baseline
  summary.md, heatmap.png, objectives.png
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

from kdcompress.core.errors import KdcError
from kdcompress.core.files import read_json, write_json_atomic, write_together, write_yaml_atomic
from kdcompress.core.reporter import NullReporter, Reporter
from kdcompress.data.dataset import Dataset
from kdcompress.runs.environment import busy_warning
from kdcompress.runs.sweep_grid import (
    FORMAT,
    Job,
    SweepRun,
    jobs,
    read_runs,
    run_name,
    summarize,
)  # fmt: skip
from kdcompress.train.collectives import barrier, broadcast_object, shard
from kdcompress.train.config import SHARED, CompressConfig, sweep_settings
from kdcompress.train.fair import Prepared, fair_start, prepare
from kdcompress.train.models import STUDENT_HEAD
from kdcompress.train.seed import Lessons, Score, Training, objective, train_one
from kdcompress.train.sweep_config import SweepConfig
from kdcompress.train.teacher import RECIPE_LEVERS, load_or_train_teacher

SHARED_SETTINGS = sweep_settings(SHARED)  # what every run of a sweep shares: a resumed sweep must agree on all of them
# Settings that sweeps written before they were recorded lack: such a folder is not refused for them.
ADDED_LATER = ("seed",)
# A shared setting a sweep folder lacks was made with its default (it was added later), the teacher's recipe levers
# with the plain recipe's.
DEFAULTED = {**{name: getattr(CompressConfig(), name) for name in SHARED_SETTINGS}, **RECIPE_LEVERS}


def sweep_students(
    config: SweepConfig, reporter: Reporter | None = None, command: str = "kdc sweep (library call)"
) -> dict[str, dict[str, Any]] | None:
    """sweep for each student of the configuration, from one teacher: its results by student architecture.

    One student sweeps into --out; several each into --out/STUDENT, where compress --from-sweep finds it. The
    teacher is trained once (the later students reuse it from the cache, or the same --teacher-weights), and each
    seed's recorded teacher outputs serve every student when all seeds' recordings fit in memory together.
    """
    reporter = reporter or NullReporter()
    recordings: dict[tuple[int, bool], Any] = {}
    busy = busy_warning()
    if busy:
        reporter.warn(busy)
    out: dict[str, dict[str, Any]] = {}
    subs = config.per_student()
    for student, sub in subs:
        if len(subs) > 1:
            reporter.info(f"student {student}: sweeping into {sub.out}")
        results = sweep(sub, reporter, command, recordings)
        if results is None:  # a process other than rank 0 under torchrun
            return None
        out[student] = results
    return out


def sweep(
    config: SweepConfig,
    reporter: Reporter | None = None,
    command: str = "kdc sweep (library call)",
    recordings: dict[tuple[int, bool], Any] | None = None,
) -> dict[str, Any] | None:
    """Train what is missing from the sweep folder, compare every grid point with the baseline, write the report.

    command is recorded in summary.md, as the way the results were made. recordings (sweep_students) keeps each
    seed's recorded teacher outputs for the next student's sweep, where they all fit in memory together.

    Under torchrun the teacher (when it must be trained) is trained by all ranks together; then each rank
    trains its own share of the missing trainings, whole, on its own device, into the shared runs/ folder,
    and rank 0 writes the summary once all are done. Ranks other than 0 return None.
    """
    reporter = reporter or NullReporter()
    cfg = config.resolved()
    if cfg.base.several:
        raise KdcError(f"sweep() takes one student, got {cfg.base.student}: sweep_students sweeps each of them")
    run = prepare(cfg.base, reporter)
    folder = Path(cfg.out)  # type: ignore[arg-type]
    total = len(cfg.seed_list()) * len(jobs(cfg))
    if run.world.main:  # rank 0 reads the folder and makes the plan: every rank gets the same one
        (folder / "runs").mkdir(parents=True, exist_ok=True)
        shared = _check_resumable(folder, run.cfg, run.data)
        header = f"kdc sweep settings of {folder.name}, resolved.\nkdc sweep --config config.yaml runs them again: it resumes this sweep."
        write_yaml_atomic(folder / "config.yaml", replace(cfg, base=run.cfg).to_options(), header)
        finished, damaged = read_runs(folder, len(run.data.test_y), len(run.data.classes))
        for name, problem in damaged.items():  # trained again, and its file replaced when that training finishes
            reporter.warn(f"{folder / 'runs' / name}.json is damaged ({problem}): that training runs again")
        done = set(finished)
        plan = [(s, c) for s in cfg.seed_list() for c in jobs(cfg) if run_name(s, c) not in done]
        if done:
            reporter.info(f"resuming {folder}: {total - len(plan)} of {total} trainings already done")
        else:
            reporter.info(f"sweep of {total} trainings into {folder}")
    shared, plan = broadcast_object((shared, plan) if run.world.main else None)
    if plan or "teacher" not in shared:
        _train_missing(cfg, run, folder, shared, plan, total, reporter, recordings)
    barrier()  # every rank's trainings are in runs/
    if not run.world.main:
        return None
    missing = [run_name(s, c) for s, c in plan if not (folder / "runs" / f"{run_name(s, c)}.json").is_file()]
    if missing:
        raise KdcError(
            f"{len(missing)} training(s) finished on other processes are not in {folder / 'runs'} (such as {missing[0]}): "
            f"under torchrun on several machines --out must be a folder they all share"
        )
    results = summarize(cfg, run.data, folder, run.device)
    from kdcompress.report.sweep_render import sweep_markdown, sweep_plots

    markdown = sweep_markdown(results, command)
    write_together(folder, {"summary.md": lambda path: path.write_text(markdown), **sweep_plots(results)})
    return results


def _check_resumable(folder: Path, base: CompressConfig, data: Dataset) -> dict[str, Any]:
    """sweep.json's content; a folder made with other settings is refused rather than mixed."""
    settings = {name: getattr(base, name) for name in SHARED_SETTINGS}
    settings["data"] = data.fingerprint()
    settings["student_head"] = STUDENT_HEAD  # a folder of students started from timm's head (none recorded) is refused
    path = folder / "sweep.json"
    if not path.is_file():
        shared = {"format": FORMAT, "settings": settings}
        write_json_atomic(path, shared)
        return shared
    shared = read_json(path, "delete the sweep folder to start over")
    recorded = shared.get("settings", {})
    differ = [
        f"{k} {recorded.get(k)!r} -> {v!r}"
        for k, v in settings.items()
        if recorded.get(k, DEFAULTED.get(k)) != v and not (k in ADDED_LATER and k not in recorded)
    ]
    if shared.get("format") != FORMAT or differ:
        raise KdcError(
            f"{folder} holds a sweep made with other settings ({'; '.join(differ) or 'older format'}): "
            f"pick another --out, or delete that folder to start over"
        )
    return shared


def _train_missing(
    cfg: SweepConfig,
    run: Prepared,
    folder: Path,
    shared: dict[str, Any],
    plan: list[tuple[int, Job]],
    total: int,
    reporter: Reporter,
    recordings: dict[tuple[int, bool], Any] | None = None,
) -> None:
    """Train this rank's share of the plan, seed by seed, each training into runs/<name>.json."""
    world = run.world
    teacher, record = load_or_train_teacher(replace(run.cfg, out=cfg.out), run.data, run.prep, run.settings, reporter)
    if "teacher" not in shared and world.main:
        shared["teacher"] = _teacher_entry(run, teacher, record)
        write_json_atomic(folder / "sweep.json", shared)
    # What the trainings learn from the teacher, made once: each seed's recorded outputs (kept for the next student's
    # sweep in recordings, where all seeds' fit in memory together) and the controls' smoothing.
    lessons = Lessons(run, teacher, reporter, len(cfg.seed_list()), recordings)
    share = shard(len(plan), world.rank, world.size)  # this rank's trainings: a contiguous run of the plan
    done = total - len(plan) + share.start
    if world.size > 1:
        reporter.info(f"{world.size} processes share the {len(plan)} missing trainings; this one trains {share.stop - share.start}")
    for seed, runs in itertools.groupby(plan[share], key=lambda item: item[0]):
        seed_jobs = [job for _, job in runs]
        start = fair_start(run, seed, teacher)  # the same initial weights and projection as `kdc compress --seed`
        settings = replace(start.settings, world_size=1, rank=0)  # each training whole, in this process
        learns_from = _seed_teacher_outputs(lessons, settings, seed_jobs, folder)
        for job in seed_jobs:
            done += 1
            matched = lessons.smoothing(*job.pair) if job.kind == "control" else None
            made = objective(start, _training(run, job, matched), learns_from)
            name = run_name(seed, job)
            reporter.info(f"[{done}/{total}] {name}: {made.describe()}")
            try:
                entry = _train_one(run, made, settings, name, reporter)
            except KdcError as exc:
                if job.kind != "distilled" or "diverged" not in str(exc):
                    raise
                reporter.warn(f"{exc}: recorded as diverged (every test image counted wrong); the sweep goes on")
                entry = _diverged(run, made, name, str(exc))
            entry.update({"seed": seed, "kind": job.kind, "temperature": job.temperature, "alpha": job.alpha, "beta": job.beta,
                          **({"kd_loss": job.kd_loss} if job.kind == "distilled" else {}),
                          **({"matched": matched} if matched else {})})  # fmt: skip
            # written through its type, which checks it as a resumed sweep will read it back
            write_json_atomic(folder / "runs" / f"{name}.json", SweepRun.from_dict(entry, len(run.data.test_y), len(run.data.classes)).to_dict())


def _teacher_entry(run: Prepared, teacher: Any, record: dict[str, Any]) -> dict[str, Any]:
    """The sweep's teacher record: its recipe record plus test accuracy (and ROC-AUC on two-class data)."""
    from kdcompress.train.loop import predict_logits

    data = run.data
    score = Score(predict_logits(teacher, data.test_x, run.prep, run.device)[:, : len(data.classes)], data.test_y)
    record.pop("history", None)
    auc = score.roc_auc
    return {**record, "architecture": run.cfg.teacher, "test_accuracy": score.accuracy, **({"roc_auc": auc} if auc is not None else {})}


def _seed_teacher_outputs(lessons: Lessons, settings: Any, seed_jobs: list[Job], folder: Path) -> Any:
    """What this seed's distilled students learn from: the teacher's outputs on every view they see, recorded once
    (the recording's cost kept in the sweep folder, as seedN-teacher-outputs.cost), replayed from an earlier student, or the teacher."""
    distilled = [job for job in seed_jobs if job.kind == "distilled"]
    if not distilled:
        return lessons.teacher
    features = any(job.cell[2] > 0 for job in distilled)
    made = lessons.outputs(settings, features, len(distilled), f"seed {settings.seed}: teacher outputs")
    if lessons.recording_seconds is not None:  # recorded now, not replayed nor live
        write_json_atomic(folder / "runs" / f"seed{settings.seed}-teacher-outputs.cost", {"seconds": lessons.recording_seconds})
    return made


def _training(run: Prepared, job: Job, matched: dict[str, float] | None) -> Training:
    """A sweep job as one training of its seed (train.seed): the cell's loss carries the sweep's knobs."""
    if job.kind == "distilled":
        return Training("distilled", *job.cell[:3], kd=replace(run.cfg.kd, kind=job.kd_loss))
    return Training(job.kind, smoothing=matched["smoothing"] if matched else None)


def _diverged(run: Prepared, made: Any, name: str, why: str) -> dict[str, Any]:
    """The run file of a distilled training that diverged: a result of the grid point like any other, every test image
    counted wrong and validation 0 (so validation never chooses it), with why. One cell's divergence (DIST on a
    3-class MobileNetV4 at lr 2e-3, for one) is a finding of the sweep, not a reason to lose the other cells."""
    return {
        "name": name, "objective": made.describe(), "test_accuracy": 0.0, "predictions": [-1] * len(run.data.test_y),
        "device": run.device, "best_epoch": 0, "best_val_accuracy": 0.0, "train_seconds": None, "diverged": why,
    }  # fmt: skip


def _train_one(run: Prepared, made: Any, settings: Any, name: str, reporter: Reporter) -> dict[str, Any]:
    """Train one objective and judge it on the test split: the run file's content, less the seed and cell."""
    trained = train_one(run, made, settings, name, reporter)
    score = trained.score(run.data.test_y)
    auc = score.roc_auc
    return {
        "name": name,
        "objective": made.describe(),
        "test_accuracy": score.accuracy,
        "predictions": score.predictions.tolist(),
        **({"roc_auc": auc} if auc is not None else {}),
        "device": run.device,
        **trained.result.record(),
    }



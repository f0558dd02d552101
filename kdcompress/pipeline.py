"""`kdc compress` as a library call: data -> models -> objectives -> fit -> export -> manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress import losses
from kdcompress.config import CompressConfig
from kdcompress.data import Dataset, load_dataset
from kdcompress.errors import KdcError
from kdcompress.manifest import FORMAT, MANIFEST, environment, write_json_atomic
from kdcompress.models import resolve_model_name
from kdcompress.reporting import NullReporter, Reporter
from kdcompress.runtime import Preprocessing

TEACHER_RECIPE = 4  # bump when the teacher's training changes, so cached teachers are not reused
# (2: zeroed head; 3: stride-1 stem at small inputs; 4: auxiliary classes where the dataset has them)
CALIBRATION_IMAGES = 512  # training images kept for INT8 calibration (kdc quantize)


@dataclass
class CompressResult:
    """Where the run was written and its manifest."""

    run_dir: Path
    manifest: dict[str, Any]


def compress(config: CompressConfig, reporter: Reporter | None = None) -> CompressResult:
    """Train teacher, baseline and distilled student; export all three; write the run folder."""
    reporter = reporter or NullReporter()
    cfg = config.resolved()
    resolve_model_name(cfg.teacher)
    resolve_model_name(cfg.student)
    from kdcompress.train import TrainSettings, resolve_device

    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size, cfg.val_fraction, reporter)
    prep = data.preprocessing()
    counts = data.counts()
    reporter.info(
        f"{data.name}: {len(data.classes)} classes, {counts['train']} train / {counts['val']} val / "
        f"{counts['test']} test images at {data.image_size}px, {data.channels} channel(s), on {device}"
    )
    final_dir, staging = _prepare_run_dir(cfg)
    try:
        settings = TrainSettings(
            epochs=cfg.epochs,  # type: ignore[arg-type]
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            device=device,
        )
        models, records = _train_all(cfg, data, prep, settings, reporter)
        manifest = _finish(cfg, data, prep, models, records, staging, final_dir.name, device, reporter)
        if cfg.int8:
            from kdcompress.quantize import quantize_run

            manifest["models"]["int8"] = quantize_run(staging, reporter=reporter)  # also written to the manifest
        _publish(staging, final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CompressResult(final_dir, manifest)


def _train_all(
    cfg: CompressConfig, data: Dataset, prep: Preprocessing, settings: Any, reporter: Reporter
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    import torch

    from kdcompress.models import create_model, create_projection
    from kdcompress.objectives import Distillation, Supervised
    from kdcompress.train import clone_model, fit

    n_classes = len(data.classes)
    teacher, teacher_record = load_or_train_teacher(cfg, data, prep, settings, reporter)

    torch.manual_seed(cfg.seed)
    initial = create_model(cfg.student, n_classes, data.channels, cfg.pretrained_student)
    baseline, student = clone_model(initial), clone_model(initial)  # identical starting weights
    torch.manual_seed(cfg.seed + 1)
    projection = create_projection(student, teacher) if cfg.beta > 0 else None

    records = {"teacher": teacher_record}
    reporter.info(f"baseline: {cfg.student}, loss = CE(student, y)")
    result = fit(Supervised(baseline), data, prep, settings, reporter, "baseline")
    records["baseline"] = {"objective": "loss = CE(student, y)", **fit_record(result)}

    distillation = Distillation(student, teacher, cfg.temperature, cfg.alpha, cfg.beta, projection)
    reporter.info(f"distilled student: {cfg.student}, {distillation.describe()}")
    result = fit(distillation, data, prep, settings, reporter, "distilled")
    records["student"] = {"objective": distillation.describe(), **fit_record(result)}
    return {"teacher": teacher, "baseline": baseline, "student": student}, records


def fit_record(result: Any) -> dict[str, Any]:
    """What a training run leaves in the manifest (or a sweep's run file): best epoch, timing, history."""
    return {
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "train_seconds": round(result.train_seconds, 2),
        "history": result.history,
    }


def auxiliary_classes(cfg: CompressConfig, data: Dataset) -> tuple[str, ...]:
    """The extra classes a teacher trained here also learns (none with --no-teacher-aux)."""
    return data.aux_classes if cfg.teacher_aux else ()


def teacher_cache_key(cfg: CompressConfig, data: Dataset) -> str:
    """Identifies a teacher by the data and every setting that shapes its training."""
    auxiliary = auxiliary_classes(cfg, data)
    fields = {
        "data": data.fingerprint(auxiliary=bool(auxiliary)),
        "auxiliary": list(auxiliary),
        "teacher": cfg.teacher,
        "pretrained": cfg.pretrained,
        "epochs": cfg.teacher_epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "recipe": TEACHER_RECIPE,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def load_or_train_teacher(
    cfg: CompressConfig, data: Dataset, prep: Preprocessing, settings: Any, reporter: Reporter
) -> tuple[Any, dict[str, Any]]:
    """Train the teacher, or reuse one: from --teacher-weights, or cached from an identical earlier run."""
    from dataclasses import replace

    from kdcompress.models import (
        create_model,
        keep_first_classes,
        load_weights,
        save_checkpoint,
        set_stem_stride,
        teacher_stem_stride,
        zero_init_head,
    )
    from kdcompress.objectives import Supervised
    from kdcompress.train import fit

    n_classes = len(data.classes)
    if cfg.teacher_weights:
        teacher = create_model(cfg.teacher, n_classes, data.channels)
        meta = load_weights(teacher, cfg.teacher_weights)
        if meta.get("classes") not in (None, data.classes):
            raise KdcError(
                f"{cfg.teacher_weights} was trained on classes {meta['classes']}, this dataset has {data.classes}"
            )
        reporter.info(f"teacher: {cfg.teacher} weights loaded from {cfg.teacher_weights} (not trained here)")
        return teacher.eval(), {"objective": "given (--teacher-weights)", "source": str(cfg.teacher_weights), "reused": True}

    key = teacher_cache_key(cfg, data)
    cache = Path(cfg.out).parent if cfg.out else Path(cfg.artifacts)
    cached = cache / ".teachers" / key
    if (cached / "teacher.pt").is_file() and (cached / "record.json").is_file() and not cfg.retrain_teacher:
        teacher = create_model(cfg.teacher, n_classes, data.channels)
        load_weights(teacher, cached / "teacher.pt")
        record = json.loads((cached / "record.json").read_text())
        reporter.info(
            f"teacher: reusing the {cfg.teacher} trained earlier with the same data and settings "
            f"({cached}); pass --retrain-teacher to train it again"
        )
        return teacher.eval(), {**record, "reused": True, "source": str(cached)}

    import torch

    torch.manual_seed(cfg.seed)
    auxiliary = auxiliary_classes(cfg, data)
    teacher = zero_init_head(create_model(cfg.teacher, n_classes + len(auxiliary), data.channels, cfg.pretrained))
    stride = teacher_stem_stride(teacher, data.image_size)
    set_stem_stride(teacher, stride)
    stem = f", stride-1 stem for {data.image_size} px inputs" if stride else ""
    reporter.info(f"teacher: {cfg.teacher}{' (ImageNet weights)' if cfg.pretrained else ''}{stem}, loss = CE(teacher, y)")
    record: dict[str, Any] = {"objective": "loss = CE(teacher, y)", "recipe": TEACHER_RECIPE, "stem_stride": stride}
    if auxiliary:
        n_aux = len(data.aux_y)  # type: ignore[arg-type]
        reporter.info(
            f"teacher: also trained on {n_aux} images of {len(auxiliary)} auxiliary classes ({', '.join(auxiliary)}), "
            f"which the students never see; it keeps only its {n_classes} {data.name} outputs"
        )
        record["auxiliary"] = {"classes": list(auxiliary), "images": n_aux}
    teacher_settings = replace(settings, epochs=cfg.teacher_epochs)
    result = fit(Supervised(teacher), data.with_auxiliary() if auxiliary else data, prep, teacher_settings, reporter, "teacher")
    keep_first_classes(teacher, n_classes)
    record.update(fit_record(result))
    tmp = cached.parent / f".{key}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_checkpoint(teacher, tmp / "teacher.pt", {"model": cfg.teacher, "classes": data.classes, "in_chans": data.channels})
    write_json_atomic(tmp / "record.json", record)
    shutil.rmtree(cached, ignore_errors=True)
    os.replace(tmp, cached)
    return teacher.eval(), {**record, "reused": False}


def _finish(
    cfg: CompressConfig,
    data: Dataset,
    prep: Preprocessing,
    models: dict[str, Any],
    records: dict[str, dict[str, Any]],
    staging: Path,
    run_name: str,
    device: str,
    reporter: Reporter,
) -> dict[str, Any]:
    """Test, export, save checkpoints and data samples, then write the manifest last."""
    from kdcompress.export import export_onnx
    from kdcompress.models import count_parameters, save_checkpoint
    from kdcompress.train import predict_logits

    (staging / "checkpoints").mkdir(exist_ok=True)
    np.savez_compressed(staging / "test_set.npz", images=data.test_x, labels=data.test_y)
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(data.train_y), size=min(CALIBRATION_IMAGES, len(data.train_y)), replace=False))
    np.savez_compressed(staging / "calibration.npz", images=data.train_x[pick], labels=data.train_y[pick])

    entries: dict[str, Any] = {}
    history = {}
    architectures = {"teacher": cfg.teacher, "baseline": cfg.student, "student": cfg.student}
    for role, model in models.items():
        record = records[role]
        history[role] = record.pop("history", [])
        logits = predict_logits(model, data.test_x, prep, device)
        predicted = logits.argmax(axis=1)
        correct = predicted == data.test_y
        per_class = {
            name: float(correct[data.test_y == i].mean()) if (data.test_y == i).any() else None
            for i, name in enumerate(data.classes)
        }
        reporter.info(f"exporting {role} to ONNX and checking it against PyTorch")
        onnx_path = staging / f"{role}.onnx"
        parity = export_onnx(model, onnx_path, prep, data.test_x)
        save_checkpoint(
            model,
            staging / "checkpoints" / f"{role}.pt",
            {"model": architectures[role], "classes": data.classes, "in_chans": data.channels},
        )
        entries[role] = {
            "architecture": architectures[role],
            "onnx": onnx_path.name,
            "checkpoint": f"checkpoints/{role}.pt",
            "parameters": count_parameters(model),
            "onnx_bytes": onnx_path.stat().st_size,
            "test_accuracy": float(correct.mean()),
            "test_correct": int(correct.sum()),
            "per_class_accuracy": per_class,
            "export": parity,
            **record,
        }
    write_json_atomic(staging / "history.json", history)

    warnings = []
    if entries["teacher"]["test_accuracy"] < entries["baseline"]["test_accuracy"]:
        warnings.append(
            f"the teacher ({entries['teacher']['test_accuracy']:.1%}) scores below the baseline student "
            f"({entries['baseline']['test_accuracy']:.1%}): distilling from it can only pass on its mistakes"
        )
    manifest = {
        "format": FORMAT,
        "run": run_name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {
            "name": data.name,
            "source": data.source,
            "classes": data.classes,
            "counts": data.counts(),
            "fingerprint": data.fingerprint(),
        },
        "preprocessing": prep.to_dict(),
        "objective": {
            "formula": losses.FORMULA,
            "notes": losses.FORMULA_NOTES,
            "resolved": records["student"]["objective"],
            "temperature": cfg.temperature,
            "alpha": cfg.alpha,
            "beta": cfg.beta,
        },
        "models": entries,
        "files": {"test_set": "test_set.npz", "calibration_set": "calibration.npz", "history": "history.json"},
        "warnings": warnings,
        "config": cfg.to_dict(),
        "device": device,
        "environment": environment(),
    }
    write_json_atomic(staging / MANIFEST, manifest)
    return manifest


def _prepare_run_dir(cfg: CompressConfig) -> tuple[Path, Path]:
    """The final run folder and the staging folder the run is built in (renamed into place at the end)."""
    if cfg.out:
        final = Path(cfg.out)
        if final.exists() and not final.is_dir():
            raise KdcError(f"--out {final} exists and is not a folder")
    else:
        root = Path(cfg.artifacts)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        final = root / f"{cfg.dataset}-{stamp}"
        suffix = 2
        while final.exists():
            final = root / f"{cfg.dataset}-{stamp}-{suffix}"
            suffix += 1
    staging = final.parent / f".partial-{final.name}.{os.getpid()}"
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise KdcError(f"cannot create the run folder next to {final} ({exc})") from None
    return final, staging


def _publish(staging: Path, final: Path) -> None:
    """Move the finished run into place; an earlier run at --out is removed only now."""
    if final.exists():
        old = final.parent / f".replaced-{final.name}.{int(time.time())}"
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)

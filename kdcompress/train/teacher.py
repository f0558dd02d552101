"""The teacher recipe: how a teacher is built, trained, cached and reused.

Everything that shapes a teacher lives here, so that `kdc compress`, `kdc sweep` and the
benchmarks share one recipe: its version (stored in every cached record), the cache key,
the auxiliary classes, and the teacher-only surgery (zeroed head, stride-1 stem, head cut).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from kdcompress.core.errors import KdcError
from kdcompress.core.files import TEACHER_TMP_SUFFIX, remove_stale, write_json_atomic
from kdcompress.core.reporter import Reporter
from kdcompress.data.dataset import Dataset
from kdcompress.data.specs import DatasetSpec
from kdcompress.deploy.preprocessing import Preprocessing
from kdcompress.train.config import CompressConfig

TEACHER_RECIPE = 4  # bump when the teacher's training changes, so cached teachers are not reused
# (2: zeroed head; 3: stride-1 stem at small inputs; 4: auxiliary classes where the dataset has them)
# Teacher levers (augmentation, label smoothing, EMA, epoch selection, class balance), off by default
# until measured: each with its default, as CompressConfig states it.
RECIPE_LEVERS = {
    name: getattr(CompressConfig(), name) for name in ("augment", "teacher_smoothing", "teacher_balance")
}
# the plain recipe's epoch selection and EMA (digits' defaults differ: data/specs.py)
RECIPE_LEVERS.update(teacher_ema=DatasetSpec.teacher_ema, teacher_select=DatasetSpec.teacher_select)
# All five together lift a from-scratch teacher above the baseline at 224 px on chest-xray, where without them it
# falls below: benchmarks/README.md, "At 224 px, do the teacher levers lift the teacher?".
HIGH_RES_LEVERS = "--augment rrc --teacher-smoothing 0.1 --teacher-ema 0.999 --teacher-select loss --teacher-balance"
HIGH_RES = 128  # from this input side up, a teacher trained with none of the levers is pointed to them


def changed_levers(cfg: CompressConfig) -> dict[str, Any]:
    """The recipe levers cfg sets away from their defaults (what the cache key holds; none: the plain recipe)."""
    return {name: getattr(cfg, name) for name, default in RECIPE_LEVERS.items() if getattr(cfg, name) != default}


def teacher_batch(cfg: CompressConfig) -> tuple[int, float]:
    """The teacher's batch size and peak learning rate: --teacher-batch-size (default --batch-size), and --lr
    scaled by the square root of the ratio of the two batches.

    The square-root rule is the one that keeps Adam-type optimisers' dynamics when the batch grows (Malladi et
    al. 2022, "On the SDEs and scaling rules for adaptive gradient algorithms"); linear scaling is SGD's. A larger
    batch also means fewer steps for the same epochs: the option is for a card that small images leave idle.
    """
    batch = cfg.teacher_batch_size or cfg.batch_size
    return batch, cfg.lr * math.sqrt(batch / cfg.batch_size)  # x 1.0 exactly by default: cached teachers stay valid


def keep_first_classes(model: Any, n_classes: int) -> Any:
    """Cut the classifier down to its first n_classes outputs (a teacher trained with auxiliary classes).

    The logits of the kept classes are unchanged, so the cut model's argmax is the argmax over the
    first n_classes logits of the full one, and it exports, distills and checkpoints as a plain
    n_classes model.
    """
    import torch.nn as nn

    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise KdcError(f"{type(model).__name__}'s classifier is not a linear layer: auxiliary classes need one")
    if head.out_features > n_classes:
        head.weight = nn.Parameter(head.weight.detach()[:n_classes].clone())
        if head.bias is not None:
            head.bias = nn.Parameter(head.bias.detach()[:n_classes].clone())
        head.out_features = n_classes
        model.num_classes = n_classes
    return model


def auxiliary_classes(cfg: CompressConfig, data: Dataset) -> tuple[str, ...]:
    """The extra classes a teacher trained here also learns (none with --no-teacher-aux)."""
    return data.aux_classes if cfg.teacher_aux else ()


def teacher_cache_key(cfg: CompressConfig, data: Dataset) -> str:
    """Identifies a teacher by the data and every setting that shapes its training."""
    auxiliary = auxiliary_classes(cfg, data)
    batch, lr = teacher_batch(cfg)
    fields = {
        "data": data.fingerprint(auxiliary=bool(auxiliary)),
        "auxiliary": list(auxiliary),
        "teacher": cfg.teacher,
        "pretrained": cfg.pretrained,
        "epochs": cfg.teacher_epochs,
        "batch_size": batch,  # the teacher's own: --batch-size unless --teacher-batch-size says otherwise
        "lr": lr,
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "recipe": TEACHER_RECIPE,
    }
    # Levers added after recipe 4 enter the key only away from their defaults, so teachers cached before stay valid.
    fields.update(changed_levers(cfg))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def teacher_cache_dir(cfg: CompressConfig) -> Path:
    """Where trained teachers are cached: --artifacts/.teachers for every run or sweep folder inside --artifacts (a
    several-student sweep's --out/STUDENT folders and --from-sweep's too, so that one teacher serves them all), and
    beside the folder in .teachers/ for one elsewhere."""
    beside = cfg.from_sweep or cfg.out
    if not beside or Path(beside).absolute().is_relative_to(Path(cfg.artifacts).absolute()):
        return Path(cfg.artifacts) / ".teachers"
    return Path(beside).parent / ".teachers"


def _cached_teacher(cfg: CompressConfig, key: str) -> Path:
    """The cache entry of this teacher: where teacher_cache_dir says, or where kdc before 2026-12 cached it (beside
    the folder: a several-student sweep's teacher sat in --out/.teachers) when only that one exists, so that an
    older sweep resumes without training its teacher again."""
    entry = teacher_cache_dir(cfg) / key
    beside = cfg.from_sweep or cfg.out
    legacy = Path(beside).parent / ".teachers" / key if beside else entry
    return legacy if not _whole(entry) and _whole(legacy) and not cfg.retrain_teacher else entry


def _whole(entry: Path) -> bool:
    """Whether a teacher cache entry holds both its files (_cache_teacher publishes them together)."""
    return (entry / "teacher.pt").is_file() and (entry / "record.json").is_file()


def load_or_train_teacher(
    cfg: CompressConfig, data: Dataset, prep: Preprocessing, settings: Any, reporter: Reporter
) -> tuple[Any, dict[str, Any]]:
    """Train the teacher, or reuse one: from --teacher-weights, or cached from an identical earlier run.

    Either way it comes back on settings.device, in eval mode.

    Under torchrun, rank 0 decides and reads the weights and every other rank receives them from it (their
    disks need not hold the cache); a teacher trained here is trained by all ranks together, cached by rank 0.
    """
    from kdcompress.train.collectives import broadcast_module, broadcast_object
    from kdcompress.train.models import create_model, set_stem_stride

    main = settings.rank == 0
    # Rank 0 alone looks for a teacher to reuse (the others follow its answer); --teacher-weights needs no cache key.
    cached = _cached_teacher(cfg, teacher_cache_key(cfg, data)) if main and not cfg.teacher_weights else None
    reuse = main and (cached is None or (_whole(cached) and not cfg.retrain_teacher))
    if broadcast_object(reuse):
        loaded = _load_teacher(cfg, data, cached, reporter) if main else None
        teacher = loaded[0] if loaded else create_model(cfg.teacher, len(data.classes), data.channels)
        stem = getattr(teacher, "conv_stem", None)  # its stride is not in the weights (recipe 3)
        record, stride = broadcast_object((loaded[1], stem and int(stem.stride[0])) if loaded else None)
        # Moved to the run's device first, as a teacher trained here is (kdc sweep scores it there at once).
        return broadcast_module(set_stem_stride(teacher, stride).to(settings.device), settings.device).eval(), record

    teacher, record = _train_teacher(cfg, data, prep, settings, reporter)
    if cached is not None:  # rank 0
        _cache_teacher(cfg, data, teacher, record, cached, reporter)
    return teacher.eval(), {**record, "reused": False}


def _load_teacher(cfg: CompressConfig, data: Dataset, cached: Path | None, reporter: Reporter) -> tuple[Any, dict[str, Any]]:
    """The teacher from --teacher-weights (cached is None), or from the cache folder cached, with its record."""
    from kdcompress.train.models import create_model, load_weights

    teacher = create_model(cfg.teacher, len(data.classes), data.channels)
    if cfg.teacher_weights:
        meta = load_weights(teacher, cfg.teacher_weights)
        if meta.get("classes") not in (None, data.classes):
            raise KdcError(
                f"{cfg.teacher_weights} was trained on classes {meta['classes']}, this dataset has {data.classes}"
            )
        reporter.info(f"teacher: {cfg.teacher} weights loaded from {cfg.teacher_weights} (not trained here)")
        return teacher, {"objective": "given (--teacher-weights)", "source": str(cfg.teacher_weights), "reused": True}
    assert cached is not None
    try:
        load_weights(teacher, cached / "teacher.pt")
        record = json.loads((cached / "record.json").read_text())
    except (KdcError, OSError, ValueError) as exc:
        raise KdcError(
            f"the cached teacher in {cached} cannot be read ({exc}): pass --retrain-teacher to train and cache it again"
        ) from None
    reporter.info(
        f"teacher: reusing the {cfg.teacher} trained earlier with the same data and settings "
        f"({cached}); pass --retrain-teacher to train it again"
    )
    return teacher, {**record, "reused": True, "source": str(cached)}


def _train_teacher(
    cfg: CompressConfig, data: Dataset, prep: Preprocessing, settings: Any, reporter: Reporter
) -> tuple[Any, dict[str, Any]]:
    import torch

    from kdcompress.train.loop import fit
    from kdcompress.train.models import adapt_to_input, create_model, zero_init_head
    from kdcompress.train.objectives import Supervised

    n_classes = len(data.classes)
    torch.manual_seed(cfg.seed)
    auxiliary = auxiliary_classes(cfg, data)
    teacher = zero_init_head(create_model(cfg.teacher, n_classes + len(auxiliary), data.channels, cfg.pretrained))
    teacher, stride = adapt_to_input(teacher, data.image_size)  # recipe 3: a stride-1 stem at small inputs
    stem = f", stride-1 stem for {data.image_size} px inputs" if stride else ""
    trained_on = data.with_auxiliary() if auxiliary else data
    weights = balancing_weights(trained_on.train_y, n_classes + len(auxiliary)) if cfg.teacher_balance else None
    objective = Supervised(teacher, cfg.teacher_smoothing, weights)
    formula = objective.describe().replace("student", "teacher")
    reporter.info(f"teacher: {cfg.teacher}{' (ImageNet weights)' if cfg.pretrained else ''}{stem}, {formula}")
    if data.image_size >= HIGH_RES and not cfg.pretrained and not changed_levers(cfg):
        reporter.info(
            f"teacher: at {data.image_size} px a teacher from scratch did far better here with {HIGH_RES_LEVERS} "
            "(measured on chest-xray at 224 px: benchmarks/README.md)"
        )
    levers = {name: getattr(cfg, name) for name in RECIPE_LEVERS}
    record: dict[str, Any] = {"objective": formula, "recipe": TEACHER_RECIPE, "stem_stride": stride, "levers": levers}
    if auxiliary:
        n_aux = len(data.aux_y)  # type: ignore[arg-type]
        reporter.info(
            f"teacher: also trained on {n_aux} images of {len(auxiliary)} auxiliary classes ({', '.join(auxiliary)}), "
            f"which the students never see; it keeps only its {n_classes} {data.name} outputs"
        )
        record["auxiliary"] = {"classes": list(auxiliary), "images": n_aux}
    batch, lr = teacher_batch(cfg)
    record.update(batch_size=batch, peak_lr=lr)
    if batch != cfg.batch_size:
        reporter.info(f"teacher: batch {batch}, peak learning rate {lr:.3g} (--lr {cfg.lr:g} x sqrt({batch}/{cfg.batch_size}))")
    teacher_settings = replace(  # mixup is the students' (--mixup); EMA and the epoch selection the teacher's
        settings, epochs=cfg.teacher_epochs, batch_size=batch, lr=lr, mixup=0.0, ema=cfg.teacher_ema, select=cfg.teacher_select
    )
    result = fit(objective, trained_on, prep, teacher_settings, reporter, "teacher")
    keep_first_classes(teacher, n_classes)
    record.update(result.record())
    return teacher, record


def balancing_weights(labels: Any, n_classes: int) -> Any:
    """Per-class weights of the cross-entropy, inverse to each class's share of labels: n / (classes x count).

    Every class with images then carries the same total weight, and the weights average 1 over the images;
    a class without images gets 0 (and is not counted in classes).
    """
    import numpy as np
    import torch

    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype(np.float64)
    present = int((counts > 0).sum())
    weights = np.divide(counts.sum(), present * counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


def _cache_teacher(
    cfg: CompressConfig, data: Dataset, teacher: Any, record: dict[str, Any], cached: Path, reporter: Reporter
) -> None:
    """Write the teacher under .teachers/<key> through a temporary folder, so a cache entry is whole or absent.

    A cache that cannot be written (full disk, read-only folder) costs only the reuse: the run goes on
    with the teacher in memory, and the temporary folder is removed.
    """
    from kdcompress.train.models import save_checkpoint

    tmp = cached.parent / f".{cached.name}.{os.getpid()}{TEACHER_TMP_SUFFIX}"
    remove_stale(cached.parent)  # teachers half-cached by killed runs
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        save_checkpoint(teacher, tmp / "teacher.pt", {"model": cfg.teacher, "classes": data.classes, "in_chans": data.channels})
        write_json_atomic(tmp / "record.json", record)
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(tmp, cached)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reporter.warn(f"could not cache the teacher in {cached.parent} ({exc.strerror or exc}); this run goes on without caching it")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def record_teacher(
    teacher: Any,
    data: Dataset,
    prep: Preprocessing,
    settings: Any,
    features: bool,
    reporter: Reporter,
    label: str = "teacher outputs",
) -> Any:
    """Run the frozen teacher once over every view a run with these settings will train on (a RecordedTeacher)."""
    import torch

    from kdcompress.train.accel import autocast, resolve_precision
    from kdcompress.train.objectives import LiveTeacher, RecordedTeacher
    from kdcompress.train.views import ViewStream

    device = settings.device
    live = LiveTeacher(teacher).to(device).to(memory_format=torch.channels_last)  # the forward students see live
    stream = ViewStream(data, prep, settings)
    logits, pooled = [], []
    with torch.no_grad(), reporter.progress(label, total=settings.epochs * stream.steps_per_epoch) as advance:
        for _ in range(settings.epochs):
            for images, _labels in stream.epoch():
                with autocast(device, resolve_precision(device, settings.precision)):
                    batch_logits, batch_pooled = live(images, None, features)
                logits.append(batch_logits.float())
                if features:
                    pooled.append(batch_pooled.float())
                advance(1)
    return RecordedTeacher(torch.stack(logits), torch.stack(pooled) if features else None, live.num_features)


RECORD_SHARE = 0.25  # at most this share of the device's memory (the CPU's: of this process's) for recorded outputs


def recording_fits(teacher: Any, data: Any, settings: Any, features: bool) -> bool:
    """Whether the teacher's logits (and pooled features) for every view of a run fit in RECORD_SHARE of memory.

    They are float32, one row per image per epoch: 200k images x 30 epochs x 1,536 EfficientNet-B3 features
    is 37 GB. When they do not fit, the teacher runs live on the same views: the same targets, more compute.
    """
    from kdcompress.data.memory import process_memory
    from kdcompress.train.models import pooled_width
    from kdcompress.train.views import steps_per_epoch

    rows = settings.epochs * steps_per_epoch(len(data.train_y), settings.batch_size) * min(settings.batch_size, len(data.train_y))
    need = rows * (len(data.classes) + (pooled_width(teacher) if features else 0)) * 4
    if settings.device == "cuda":
        import torch

        budget = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    else:
        budget = process_memory() or need
    return need <= RECORD_SHARE * budget

"""The fair starting point: what `kdc compress`, `kdc sweep` and the benchmarks all train from.

The baseline and every distilled student of one seed start from the same initial weights, see
the same views in the same order and follow the same schedule; only the objective differs. That
property is built here, once: `prepare` resolves the settings, device and data of a run, and
`fair_start` gives, for one seed, the initial student, the projection and the training settings
from which `baseline()` and `distilled(...)` objectives are made.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from kdcompress.core.errors import KdcError
from kdcompress.core.reporter import Reporter
from kdcompress.core.world import World
from kdcompress.data.dataset import Dataset, load_dataset
from kdcompress.deploy.preprocessing import Preprocessing
from kdcompress.train.collectives import broadcast_object, start
from kdcompress.train.config import CompressConfig
from kdcompress.train.models import resolve_model_name


@dataclass
class Prepared:
    """A validated configuration with its device, data, preprocessing and training settings."""

    cfg: CompressConfig  # resolved: dataset defaults filled in
    device: str  # "cpu" or "cuda"
    data: Dataset
    prep: Preprocessing
    settings: Any  # loop.TrainSettings for cfg.seed
    world: World = World()  # the processes torchrun started (one without torchrun)
    warnings: list[str] = field(default_factory=list)  # said before training; a run stores them in its manifest

    @cached_property
    def distilled_data(self) -> Dataset:
        """What the distilled students train on: the data, with --unlabeled's images added (labelled UNLABELED)."""
        return self.data.with_unlabeled()

    def training_data(self, distilled: bool) -> Dataset:
        """The training images of one objective: the baseline and the control see the labeled ones only."""
        return self.distilled_data if distilled else self.data


def prepare(config: CompressConfig, reporter: Reporter) -> Prepared:
    """Validate the settings, then resolve the device, join torchrun's processes and load the data (all before training).

    Under torchrun every rank loads the data itself (from its own disk) and trains its share of each batch.
    """
    cfg = config.resolved()
    resolve_model_name(cfg.teacher)
    for student in cfg.named_students:
        resolve_model_name(student)
    from kdcompress.train.accel import autotune, resolve_device, step_mode
    from kdcompress.train.loop import TrainSettings

    device = resolve_device(cfg.device)
    world = start(device)
    autotune(step_mode(cfg.compile, device, world.size), 0)  # --compile graph without CUDA, or a bad KDC_CUDNN_AUTOTUNE: refused now
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size, cfg.val_fraction, reporter, cfg.stream)
    if cfg.unlabeled is not None:
        data = with_unlabeled_images(data, cfg.unlabeled, reporter)
    from kdcompress.train.models import check_input_size

    # One forward pass of each model at the run's image size, before any training: a student that cannot take it
    # would otherwise fail after the teacher and the other students had trained.
    check_input_size(cfg.teacher, "--teacher", data.channels, data.image_size, "auto")  # the teacher recipe's stem rule
    for student in cfg.named_students:
        check_input_size(student, "--student", data.channels, data.image_size, cfg.student_stem)
    settings = TrainSettings(
        epochs=cfg.epochs,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        device=device,
        compile=cfg.compile,
        augment=cfg.augment,
        mixup=cfg.mixup,
        classes=len(data.classes),
        world_size=world.size,
        rank=world.rank,
    )
    few_steps = few_steps_warning(data.counts()["train"], cfg)
    warnings = [few_steps] if few_steps else []
    if few_steps and world.main:
        reporter.warn(few_steps)
    # Measured once, by rank 0: for streamed data it is a pass over every training image.
    prep = broadcast_object(data.preprocessing() if world.main else None)
    return Prepared(cfg, device, data, prep, settings, world, warnings)


def with_unlabeled_images(data: Dataset, unlabeled: str, reporter: Reporter) -> Dataset:
    """data with --unlabeled's images attached (a folder's, or with 'aux' the dataset's auxiliary images without their
    labels), said in one line: who sees them and how."""
    from kdcompress.data.readers import load_unlabeled
    from kdcompress.train.config import UNLABELED_AUX

    if unlabeled == UNLABELED_AUX:
        if data.aux_x is None:
            raise KdcError(f"--unlabeled {UNLABELED_AUX}: {data.name} has no auxiliary images; pass a folder of images")
        images, where = data.aux_x, f"{data.name}'s {len(data.aux_classes)} auxiliary classes ({', '.join(data.aux_classes)})"
    else:
        images, where = load_unlabeled(Path(unlabeled), data.image_size, data.channels, reporter), unlabeled
    reporter.info(
        f"unlabeled: {len(images)} images from {where}, seen by the distilled students only, through the teacher's "
        f"outputs (no cross-entropy on them); the baseline and the control train on the {len(data.train_y)} labeled images"
    )
    return replace(data, unlabeled_x=images, unlabeled_source=f"{len(images)} images from {where}")


@dataclass
class FairStart:
    """One seed's starting point: every student made from it differs from the others only in its objective."""

    seed: int
    settings: Any  # loop.TrainSettings with this seed: same views, order and schedule for every student
    initial: Any  # the student's initial weights (never trained itself: each objective gets a copy)
    projection: Any  # student -> teacher feature projection's initial weights (copied for beta > 0)
    views: int = 0  # batches in one training (DKD's warm-up is a share of them)
    stem_stride: int | None = None  # the small-input stem every objective shares (--student-stem auto), or None
    unlabeled: bool = False  # the distilled students also see images without labels (their CE leaves them out)

    def baseline(self) -> Any:
        """CE on labels, from the shared initial weights."""
        from kdcompress.train.loop import clone_model
        from kdcompress.train.objectives import Supervised

        return Supervised(clone_model(self.initial))

    def control(self, smoothing: float) -> Any:
        """The label-smoothing control: the baseline's objective with a softened target, from the same weights."""
        from kdcompress.train.loop import clone_model
        from kdcompress.train.objectives import Supervised

        return Supervised(clone_model(self.initial), smoothing)

    def distilled(self, teacher: Any, temperature: float, alpha: float, beta: float, kd: Any = None) -> Any:
        """The distillation objective (live or recorded teacher), from the same initial weights and projection.

        kd: the logit term (losses.KdLoss; default KL).
        """
        from kdcompress.train.loop import clone_model
        from kdcompress.train.losses import KdLoss
        from kdcompress.train.objectives import Distillation

        projection = clone_model(self.projection) if beta > 0 else None
        return Distillation(clone_model(self.initial), teacher, temperature, alpha, beta, projection, kd or KdLoss(), self.views,
                            self.unlabeled)  # fmt: skip


def fair_start(prepared: Prepared, seed: int, teacher: Any, architecture: str | None = None) -> FairStart:
    """The initial student (seeded with seed) and projection (seed + 1) for one seed; same seed, same weights.

    architecture: which of the run's students (default: the first, the only one of a plain run). Every student
    of a run starts from the same seed, so each one's start is the one a run of that student alone would get.
    """
    import torch

    from kdcompress.core.roles import pruned_ratio
    from kdcompress.train.models import adapt_to_input, create_model, create_projection, zero_init_head
    from kdcompress.train.prune import prune
    from kdcompress.train.views import steps_per_epoch

    cfg, data = prepared.cfg, prepared.data
    torch.manual_seed(seed)
    name = architecture or cfg.students[0]
    ratio = pruned_ratio(name)
    if ratio is not None:  # the teacher pruned: its weights, its stem and its head are the start (train.prune)
        initial, stride = prune(teacher, ratio, data.channels, data.image_size), None
    else:
        initial = create_model(name, len(data.classes), data.channels, cfg.student_pretrained(name))
        initial, stride = adapt_to_input(initial, data.image_size, cfg.student_stem)  # shared by every objective below
        initial = zero_init_head(initial)  # uniform first predictions, as the teacher's (models.STUDENT_HEAD)
    torch.manual_seed(seed + 1)
    projection = create_projection(initial, teacher)
    settings = replace(prepared.settings, seed=seed)
    views = settings.epochs * steps_per_epoch(len(prepared.distilled_data.train_y), settings.batch_size)
    return FairStart(seed, settings, initial, projection, views, stride, data.unlabeled_x is not None)


def teacher_train_logits(prepared: Prepared, teacher: Any) -> Any:
    """The teacher's logits for the training split, unaugmented, over the dataset's own classes (shared by all ranks)."""
    from kdcompress.train.loop import shared_logits

    data = prepared.data
    return shared_logits(teacher, data.train_x, prepared.prep, prepared.settings)[:, : len(data.classes)]


def control_smoothing(prepared: Prepared, teacher_logits: Any, temperature: float, alpha: float) -> dict[str, float]:
    """The control's label smoothing: the soft part of the distillation target, spread evenly over the classes.

    The distilled student's target mixes the hard label (weight 1 - alpha) with the teacher's outputs at
    temperature T (weight alpha), which put an average mass m off the true class on the training split
    (teacher_logits: `teacher_train_logits`). The control's smoothed label puts the same alpha * m off the
    true class, but evenly instead of by what the teacher knows: plain regularisation of the same strength
    (Yuan et al., CVPR 2020).
    """
    from kdcompress.train.losses import matching_smoothing, off_true_mass

    data = prepared.data
    mass = off_true_mass(teacher_logits, data.train_y, temperature)
    return {
        "temperature": temperature,
        "alpha": alpha,
        "teacher_off_true_mass": round(mass, 6),
        "smoothing": round(matching_smoothing(alpha * mass, len(data.classes)), 6),
    }


MIN_BATCHES_PER_EPOCH = 8  # digits, the smallest set kdc ships, makes 10 batches of 128 an epoch and learns in 5 epochs


def few_steps_warning(train_images: int, cfg: CompressConfig) -> str | None:
    """A warning when the batch is so large for the training images that each training takes only a handful of
    optimizer steps (a folder of 230 images at batch 128: one step an epoch, 15 in all, and models that answer one
    class), with the batch size that gives MIN_BATCHES_PER_EPOCH; None when there are enough."""
    from kdcompress.train.views import steps_per_epoch

    per_epoch = steps_per_epoch(train_images, cfg.batch_size)
    if per_epoch >= MIN_BATCHES_PER_EPOCH or train_images < 2 * MIN_BATCHES_PER_EPOCH:
        return None
    smaller = 2 ** max(1, (train_images // MIN_BATCHES_PER_EPOCH).bit_length() - 1)  # a power of two, at least 2
    return (
        f"{train_images} training images make {per_epoch} batch(es) of {cfg.batch_size} an epoch, so each student "
        f"trains for {per_epoch * cfg.epochs} optimizer steps in {cfg.epochs} epochs: too few for most models to learn "
        f"anything; --batch-size {smaller} gives {steps_per_epoch(train_images, smaller)} an epoch (more images, or "
        f"--epochs, give more steps too)"
    )

"""Settings of one `kdc compress` run, with their defaults and allowed ranges."""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kdcompress.data.specs import resolve_spec
from kdcompress.core.errors import KdcError
from kdcompress.train.losses import KD_LOSSES, KdLoss


MAX_SEED = 2**32 - 1  # numpy's and torch's generators both take seeds in [0, 2^32)
DEVICES = ("auto", "cpu", "cuda")
COMPILE_CHOICES = ("auto", "on", "off", "graph")  # accel.step_mode says what each means
STEMS = ("timm", "auto")  # --student-stem: models.small_input_stem says what auto does
CONTROLS = ("label-smoothing", "none")  # the fourth model of kdc compress (fair.control_smoothing)
AUGMENTATIONS = ("crop", "rrc")  # views.views: padding crop (CIFAR recipe) | random-resized crop, rotation, intensity
SELECTIONS = ("accuracy", "loss")  # how the teacher's kept epoch is chosen on validation
PATHS = ("data_dir", "teacher_weights", "artifacts", "out", "from_sweep")  # the settings that name files or folders


Cell = tuple[float, float, float, str]  # (T, alpha, beta, KD loss): one distilled point of a sweep's grid
UNLABELED_AUX = "aux"  # --unlabeled aux: the dataset's auxiliary images (cifar3: CIFAR-10's 7 other classes), labels dropped


@dataclass(frozen=True)
class CompressConfig:
    """Everything that decides what `kdc compress` trains; stored whole in the manifest."""

    dataset: str = "digits"  # digits (offline default) | cifar3 | chest-xray | folder
    data_dir: str | None = None  # dataset location; cifar3 looks for cifar-10-batches-py here (default ./data)
    image_size: int | None = None  # model input side in pixels; None = the dataset's default
    teacher: str | None = None  # any timm model name; None = the dataset's default (digits resnet34, others efficientnet_b3)
    student: str | None = None  # timm model name(s), comma-separated for several; None = the dataset's default students
    pretrained: bool = False  # start the teacher from timm's ImageNet weights (needs the hub)
    pretrained_student: bool = False  # start every student from ImageNet weights (needs the hub)
    pretrained_students: str | None = None  # or only these students, comma-separated (the others from scratch)
    prune: str | None = None  # ratios, comma-separated: students carved from the teacher (train.prune: pruned50 ...)
    prune_to_ms: float | None = None  # also the teacher pruned just enough to run within this latency here (train.prune)
    teacher_weights: str | None = None  # a trained teacher checkpoint to use instead of training one
    retrain_teacher: bool = False  # train the teacher even if an identical one is cached
    teacher_smoothing: float = 0.0  # label smoothing of the teacher's own training
    teacher_ema: float | None = None  # EMA of the teacher's weights with this decay (timm ModelEmaV3); 0 = off; None = the dataset's
    teacher_select: str | None = None  # the teacher's kept epoch: best validation accuracy, or lowest loss; None = the dataset's
    teacher_balance: bool = False  # weight the teacher's cross-entropy by inverse class frequency in its training images
    teacher_aux: bool = True  # also train the teacher on the dataset's auxiliary classes (cifar3: CIFAR-10's 7 others)
    temperature: float = 4.0  # T: softens both logit sets before the KL term
    alpha: float = 0.5  # weight of the KL term; CE gets 1 - alpha
    beta: float = 0.3  # weight of the feature-alignment term; 0 = logits-only distillation
    kd_loss: str = "kl"  # the logit term alpha weights: kl | dist | dkd (losses.KdLoss)
    dist_inter: float = KdLoss.dist_inter  # DIST: weight of the per-image relation
    dist_intra: float = KdLoss.dist_intra  # DIST: weight of the per-class relation
    dkd_target: float = KdLoss.dkd_target  # DKD: weight of the target-class term
    dkd_nontarget: float = KdLoss.dkd_nontarget  # DKD: weight of the non-target term
    dkd_warmup: float = KdLoss.dkd_warmup  # DKD: share of the training over which its term ramps up
    student_stem: str = "timm"  # timm: students as timm builds them | auto: a stride-1 stem at small inputs (models.small_input_stem)
    augment: str = "crop"  # views of every training: crop (reflect-padded crop + flip) | rrc (random-resized crop ...)
    unlabeled: str | None = None  # images without labels the distilled student also learns from, through the teacher: DIR | aux
    mixup: float = 0.0  # students train on mixed views (Beta(m, m) weights), the teacher seeing the same ones; 0 = off
    control: str = "label-smoothing"  # also train the student with label smoothing of the distillation's strength; none = skip
    epochs: int | None = None  # epochs per training; None = the dataset's default
    teacher_epochs: int | None = None  # epochs for the teacher; None = epochs x the dataset's factor (cifar3 2, others 1)
    batch_size: int = 128
    teacher_batch_size: int | None = None  # the teacher's batch; None = batch_size (teacher.teacher_batch: lr x sqrt(ratio))
    lr: float = 2e-3  # peak learning rate, AdamW with a one-cycle schedule
    weight_decay: float = 0.05
    val_fraction: float = 0.1  # share of train held out (stratified, fixed split) to pick the best epoch
    stream: bool = False  # read a folder's images from disk batch by batch (automatic when they would not fit in memory)
    seed: int = 0  # weights, data order and augmentation; same seed on CPU gives the same numbers
    device: str = "auto"  # auto | cpu | cuda
    compile: str = "auto"  # auto | on | off | graph: how training steps run (accel.step_mode)
    artifacts: str = "artifacts"  # root folder; each run gets its own sub-folder
    out: str | None = None  # exact run folder; replaces an earlier run there once the new one is complete
    int8: bool = False  # also write a static INT8 version of the distilled student (kdc quantize)
    from_sweep: str | None = None  # a finished sweep folder: its chosen cell and shared settings (kdcompress.runs.from_sweep)

    def resolved(self) -> "CompressConfig":
        """Validate and fill the dataset-dependent defaults."""
        spec = resolve_spec(self.dataset)
        _check_range("--T", self.temperature, 0.05, 100.0)
        _check_range("--alpha", self.alpha, 0.0, 1.0)
        _check_range("--beta", self.beta, 0.0, 100.0)
        _check_range("--val-fraction", self.val_fraction, 0.01, 0.5)
        _check_range("--mixup", self.mixup, 0.0, 10.0)
        for flag, value in (("--dist-inter", self.dist_inter), ("--dist-intra", self.dist_intra),
                            ("--dkd-target", self.dkd_target), ("--dkd-nontarget", self.dkd_nontarget)):  # fmt: skip
            _check_range(flag, value, 0.0, 100.0)
        _check_range("--dkd-warmup", self.dkd_warmup, 0.0, 1.0)
        silent = {"dist": ("--dist-inter", "--dist-intra"), "dkd": ("--dkd-target", "--dkd-nontarget")}.get(self.kd_loss)
        weights = {"dist": (self.dist_inter, self.dist_intra), "dkd": (self.dkd_target, self.dkd_nontarget)}.get(self.kd_loss)
        if silent and weights and not any(weights) and self.alpha > 0:
            raise KdcError(
                f"--kd-loss {self.kd_loss} with {' and '.join(f'{f} 0' for f in silent)} is a logit term that is 0 for every "
                f"image, weighted by --alpha {self.alpha:g}: the distilled student would not learn from the teacher's outputs. "
                f"Give one of them a weight, or use --alpha 0"
            )
        _check_range("--teacher-smoothing", self.teacher_smoothing, 0.0, 0.9)
        if self.teacher_ema is not None:
            _check_range("--teacher-ema", self.teacher_ema, 0.0, 0.99999)
        for flag, value, choices in (
            ("--device", self.device, DEVICES),
            ("--compile", self.compile, COMPILE_CHOICES),
            ("--control", self.control, CONTROLS),
            ("--augment", self.augment, AUGMENTATIONS),
            ("--kd-loss", self.kd_loss, KD_LOSSES),
            ("--student-stem", self.student_stem, STEMS),
            ("--teacher-select", self.teacher_select or spec.teacher_select, SELECTIONS),
        ):
            if value not in choices:
                raise KdcError(f"{flag} must be {one_of(choices)}, not '{value}'")
        _check_range("--lr", self.lr, 1e-7, 10.0)
        _check_range("--weight-decay", self.weight_decay, 0.0, 10.0)
        _check_range("--seed", self.seed, 0, MAX_SEED)
        for flag, value, low, high in (
            ("--epochs", self.epochs, 1, 10_000),
            ("--teacher-epochs", self.teacher_epochs, 1, 10_000),
            ("--batch-size", self.batch_size, 2, 65_536),
            ("--teacher-batch-size", self.teacher_batch_size, 2, 65_536),
            ("--image-size", self.image_size, 8, 2048),
        ):
            if value is not None:
                _check_range(flag, value, low, high)
        students = split_students(self.student or spec.student)
        if self.teacher_weights and self.pretrained:
            raise KdcError("--pretrained and --teacher-weights both set the teacher's weights: pick one")
        if self.unlabeled is not None:
            self._check_unlabeled()
        self.prune_ratios  # noqa: B018 (refused in one line here, before anything loads)
        if self.pretrained_students is not None:
            chosen, named = split_students(self.pretrained_students), split_students(self.student or spec.student)
            unknown = [name for name in chosen if name not in named]
            if unknown:
                raise KdcError(f"--pretrained-students names {', '.join(unknown)}, not a --student of this run ({', '.join(named)})")
        if self.prune_to_ms is not None:
            _check_range("--prune-to-ms", self.prune_to_ms, 0.001, 100_000.0)
        epochs = self.epochs or spec.epochs
        return replace(
            self,
            student=",".join(students),
            image_size=self.image_size or spec.image_size,
            teacher=self.teacher or spec.teacher,
            teacher_select=self.teacher_select or spec.teacher_select,
            teacher_ema=spec.teacher_ema if self.teacher_ema is None else self.teacher_ema,
            epochs=epochs,
            teacher_epochs=self.teacher_epochs or epochs * spec.teacher_epoch_factor,
            # None whenever it equals --batch-size: one spelling of one recipe (sweep folders compare settings)
            teacher_batch_size=None if self.teacher_batch_size == self.batch_size else self.teacher_batch_size,
        )

    def _check_unlabeled(self) -> None:
        """--unlabeled: what it cannot be combined with, said before anything loads or trains."""
        if self.unlabeled == UNLABELED_AUX and resolve_spec(self.dataset).name != "cifar3":
            raise KdcError(f"--unlabeled {UNLABELED_AUX} uses cifar3's auxiliary images; {self.dataset} has none: pass a folder of images")
        if self.kd_loss == "dkd":
            raise KdcError("--kd-loss dkd splits its term by the true class, which images without labels lack: use kl or dist with --unlabeled")
        if self.alpha == 0:
            raise KdcError("--unlabeled with --alpha 0: the images without labels would teach nothing; use --alpha above 0")
        if self.stream:
            raise KdcError("--unlabeled holds its images in memory: drop --stream")

    @property
    def named_students(self) -> list[str]:
        """The timm student architectures, in the order given (the dataset's default ones when none was given)."""
        return split_students(self.student or resolve_spec(self.dataset).student)

    @property
    def students(self) -> list[str]:
        """Every student: the named architectures, then the teacher pruned at each --prune ratio (pruned50 ...)."""
        from kdcompress.core.roles import pruned_name

        return self.named_students + [pruned_name(r) for r in self.prune_ratios]

    def student_pretrained(self, name: str) -> bool:
        """Whether student name starts from ImageNet weights: --pretrained-student (all), or --pretrained-students names it."""
        return self.pretrained_student or (self.pretrained_students is not None and name in split_students(self.pretrained_students))

    @property
    def prune_ratios(self) -> list[float]:
        """--prune as numbers: each a share of channels to remove, 0.05 to 0.95 in steps of 0.01, each once."""
        if self.prune is None:
            return []
        try:
            ratios = [float(v) for v in str(self.prune).split(",")]
        except ValueError:
            raise KdcError(f"--prune takes comma-separated ratios such as 0.5,0.8, got '{self.prune}'") from None
        for ratio in ratios:
            if not (0.05 <= ratio <= 0.95 and abs(ratio * 100 - round(ratio * 100)) < 1e-9):
                raise KdcError(f"--prune ratios must be between 0.05 and 0.95 in steps of 0.01, got {ratio:g}")
        if len(set(ratios)) != len(ratios):
            raise KdcError(f"--prune lists a ratio twice: {self.prune}")
        return ratios

    @property
    def kd(self) -> KdLoss:
        """The logit term of the distillation, with its knobs."""
        return KdLoss(self.kd_loss, self.dist_inter, self.dist_intra, self.dkd_target, self.dkd_nontarget, self.dkd_warmup)

    @property
    def several(self) -> bool:
        """Whether this run trains several students (its roles are then named by architecture: roles.role)."""
        return len(self.students) > 1

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest."""
        return asdict(self)

    def to_options(self, leave_out: tuple[str, ...] = ("out",)) -> dict[str, Any]:
        """The settings as `--config FILE.yaml` takes them: option names (teacher-epochs) -> values.

        Paths become absolute, so the file works from any folder; --out is left out, so that running the file
        again writes a new run beside the first instead of replacing it.
        """
        values = {}
        for name, value in asdict(self).items():
            if name in leave_out:
                continue
            if (name in PATHS or (name == "unlabeled" and value != UNLABELED_AUX)) and value is not None:
                value = str(Path(value).absolute())
            values[name.replace("_", "-")] = value
        return values


MAX_STUDENTS = 8  # each student is three trainings; more belongs in separate runs


def split_students(text: str) -> list[str]:
    """'resnet18, resnet10t' -> ['resnet18', 'resnet10t']; empty, repeated or too many names are refused in one line."""
    names = [name.strip() for name in str(text).split(",")]
    if not all(names):
        raise KdcError(f"--student '{text}' has an empty name: give timm model names separated by commas, such as resnet18,resnet10t")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise KdcError(f"--student names {', '.join(repeated)} more than once: give each student once")
    if len(names) > MAX_STUDENTS:
        raise KdcError(f"--student names {len(names)} students; at most {MAX_STUDENTS} fit one run: split them over several runs")
    unsafe = [name for name in names if not re.fullmatch(r"[A-Za-z0-9_.]+", name)]
    if len(names) > 1 and unsafe:  # several students name their files by architecture (core.roles)
        raise KdcError(f"--student {unsafe[0]}: in a run of several students each must be a plain timm model name (letters, "
                       f"digits, '_' and '.'), as it names the files; run it alone instead")  # fmt: skip
    return names


def one_of(choices: tuple[str, ...]) -> str:
    """('auto', 'cpu', 'cuda') -> 'auto, cpu or cuda'."""
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


def _check_range(flag: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise KdcError(f"{flag} must be between {number_text(low)} and {number_text(high)}, got {number_text(value)}")


def number_text(value: float) -> str:
    """A number as a person types it: whole numbers in full (4294967295, not 4.29497e+09), others short (0.05)."""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e16):
        return str(int(value))
    return f"{value:g}"


@dataclass(frozen=True)
class SweepConfig:
    """A grid of (T, alpha, beta, KD loss) over seeds; everything else comes from a compress configuration."""

    base: CompressConfig
    # The default grid, 2 x 2 x 2 = 8 students a seed (its cost: benchmarks/sweep_cost.py).
    temperatures: tuple[float, ...] = (1.0, 4.0)
    alphas: tuple[float, ...] = (0.5, 0.9)
    betas: tuple[float, ...] = (0.0, 0.3)
    kd_losses: tuple[str, ...] = ("kl",)  # --kd-loss kl,dist,dkd: each a grid axis value (losses.KD_LOSSES)
    seeds: int = 3  # seeds base.seed, base.seed + 1, ...
    out: str | None = None  # sweep folder; default <artifacts>/sweep-<dataset>

    def resolved(self) -> "SweepConfig":
        """Validate every grid value with compress's own ranges and fill the defaults."""
        base = replace(self.base, int8=False).resolved()
        if not 1 <= self.seeds <= 100:
            raise KdcError(f"--seeds must be between 1 and 100, got {self.seeds}")
        for flag, values, field in (
            ("--T", self.temperatures, "temperature"),
            ("--alpha", self.alphas, "alpha"),
            ("--beta", self.betas, "beta"),
        ):
            if not values:
                raise KdcError(f"{flag} needs at least one value")
            if len(set(values)) != len(values):
                raise KdcError(f"{flag} lists a value twice: {', '.join(f'{v:g}' for v in values)}")
            for value in values:
                replace(base, **{field: value}).resolved()
        if not self.kd_losses or len(set(self.kd_losses)) != len(self.kd_losses):
            raise KdcError(f"--kd-loss needs each loss once, got '{','.join(self.kd_losses)}'")
        for loss in self.kd_losses:
            replace(base, kd_loss=loss).resolved()
        return replace(self, base=base, out=self.out or str(Path(base.artifacts) / f"sweep-{base.dataset}"))

    def to_options(self) -> dict[str, Any]:
        """The sweep's settings as `kdc sweep --config FILE.yaml` takes them (the grids as lists)."""
        grid = {"temperature": list(self.temperatures), "alpha": list(self.alphas), "beta": list(self.betas),
                "kd-loss": list(self.kd_losses)}  # fmt: skip
        compress_only = ("out", "int8", "from_sweep", "prune", "prune_to_ms", "pretrained_students")  # no such sweep option
        base = self.base.to_options(leave_out=("temperature", "alpha", "beta", "kd_loss", *compress_only))
        out = str(Path(self.out).absolute()) if self.out else None
        return {**base, **grid, "seeds": self.seeds, "out": out}

    def per_student(self) -> list[tuple[str, "SweepConfig"]]:
        """The sweep of each student, resolved: one student sweeps into --out itself; several, each into --out/STUDENT."""
        cfg = self.resolved()
        if not cfg.base.several:
            return [(cfg.base.student, cfg)]  # type: ignore[list-item]
        return [(s, replace(cfg, base=replace(cfg.base, student=s), out=str(Path(cfg.out) / s))) for s in cfg.base.students]  # type: ignore[arg-type]

    def cells(self) -> list[Cell]:
        """Every (T, alpha, beta, KD loss) of the grid."""
        return list(itertools.product(self.temperatures, self.alphas, self.betas, self.kd_losses))

    def seed_list(self) -> list[int]:
        """The seeds the sweep trains with."""
        return [self.base.seed + i for i in range(self.seeds)]

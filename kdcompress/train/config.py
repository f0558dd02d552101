"""Settings of one `kdc compress` run: each a field that states its default, flag, help panel, help, allowed range
and what a sweep does with it, once. The command line (cli/options.py) is generated from these fields."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kdcompress.core.errors import KdcError
from kdcompress.data.specs import resolve_spec
from kdcompress.train.losses import KD_LOSSES, KdLoss

MAX_SEED = 2**32 - 1  # numpy's and torch's generators both take seeds in [0, 2^32)
DEVICES = ("auto", "cpu", "cuda")
COMPILE_CHOICES = ("auto", "on", "off", "graph")  # accel.step_mode says what each means
STEMS = ("timm", "auto")  # --student-stem: models.small_input_stem says what auto does
CONTROLS = ("label-smoothing", "none")  # the fourth model of kdc compress (fair.control_smoothing)
AUGMENTATIONS = ("crop", "rrc")  # views.views: padding crop (CIFAR recipe) | random-resized crop, rotation, intensity
SELECTIONS = ("accuracy", "loss")  # how the teacher's kept epoch is chosen on validation

Cell = tuple[float, float, float, str]  # (T, alpha, beta, KD loss): one distilled point of a sweep's grid
UNLABELED_AUX = "aux"  # --unlabeled aux: the dataset's auxiliary images (cifar3: CIFAR-10's 7 other classes), labels dropped

# The help panels of `kdc compress --help` and `kdc sweep --help`.
DATA, TEACHER, STUDENTS, TRAINING, HARDWARE, OUTPUT = ("Data", "Teacher", "Students and distillation", "Training", "Hardware", "Output")
# What `kdc sweep` does with a setting: every run of a sweep shares it (and a resumed sweep must agree on it), it takes
# it but may differ between resumptions, it takes a list of values (a grid axis), or it has no such option.
SHARED, RUN, GRID, COMPRESS_ONLY = "shared", "run", "grid", "compress only"
SWEEP_SEEDS = 3  # kdc sweep --seeds: base.seed, base.seed + 1, ...


@dataclass(frozen=True)
class Setting:
    """What the command line needs to know of one CompressConfig field (its `metadata["setting"]`)."""

    help: str
    panel: str
    flags: tuple[str, ...] = ()  # default: --field-name (--name/--no-name for a bool)
    low: float | None = None  # allowed range, checked by CompressConfig.resolved (None: no range)
    high: float | None = None
    choices: tuple[str, ...] = ()
    sweep: str = SHARED
    path: bool = False  # names a file or folder: absolute in config.yaml
    per_dataset: str = ""  # data/specs.py's field whose per-dataset default the help lists
    unit: str = ""
    grid: tuple[Any, ...] = ()  # a GRID setting's default values in kdc sweep

    def flag_names(self, name: str) -> tuple[str, ...]:
        return self.flags or (f"--{name.replace('_', '-')}",)


def setting(default: Any, help: str, panel: str, **how: Any) -> Any:
    """A CompressConfig field: its default and its Setting."""
    return field(default=default, metadata={"setting": Setting(" ".join(help.split()), panel, **how)})


def settings() -> dict[str, tuple[Any, Setting]]:
    """Every CompressConfig field -> (its default, its Setting), in declaration order."""
    return {f.name: (f.default, f.metadata["setting"]) for f in fields(CompressConfig)}


KD_LOSS_HELP = (
    "kl: T^2 * KL(softmax(teacher/T) || softmax(student/T)) (Hinton 2015). dist: T^2 * (1 - Pearson correlation) of the "
    "softened outputs, per image (--dist-inter) and per class over the batch (--dist-intra) (DIST, Huang 2022): the "
    "teacher's rankings, not its exact probabilities. dkd: the KL split at the true class, T^2 * (--dkd-target * TCKD + "
    "--dkd-nontarget * NCKD), ramped up over --dkd-warmup (DKD, Zhao 2022); with two classes NCKD is empty."
)
WEIGHT = {"low": 0.0, "high": 100.0}
EPOCHS = {"low": 1, "high": 10_000}
BATCH = {"low": 2, "high": 65_536}


@dataclass(frozen=True)
class CompressConfig:
    """Everything that decides what `kdc compress` trains; stored whole in the manifest."""

    dataset: str = setting("digits", "digits (offline default), cifar3, chest-xray, or folder.", DATA, flags=("--dataset", "-d"))
    data_dir: str | None = setting(
        None, "Where the data is: cifar3 looks for cifar-10-batches-py here (default ./data, downloaded when absent); "
        "chest-xray and folder need it.", DATA, sweep=RUN, path=True,
    )  # fmt: skip
    image_size: int | None = setting(None, "Input side in pixels.", DATA, low=8, high=2048, per_dataset="image_size")
    teacher: str | None = setting(None, "Teacher: any timm model name.", TEACHER, per_dataset="teacher")
    student: str | None = setting(
        None, "Student(s): timm model names, comma-separated for several (resnet18,resnet10t); each gets its own fair "
        "start, baseline, distilled student and control, from one teacher; pruned50 names the teacher pruned by half "
        "(--prune). kdc sweep: a sweep folder per student, OUT/STUDENT.", STUDENTS, per_dataset="student",
    )  # fmt: skip
    pretrained: bool = setting(False, "Start the teacher from timm's ImageNet weights (downloads).", TEACHER)
    pretrained_student: bool = setting(False, "Start every student from ImageNet weights.", STUDENTS)
    pretrained_students: str | None = setting(
        None, "Start only these students (comma-separated, among --student) from ImageNet weights, the others from "
        "scratch: tf_efficientnet_lite0 beside resnet10t, say.", STUDENTS, sweep=COMPRESS_ONLY,
    )  # fmt: skip
    prune: str | None = setting(
        None, """
        Also students carved from the trained teacher: ratios such as 0.5,0.8, each the share of channels
        Torch-Pruning removes from every prunable layer group (L2 magnitude; the classifier kept). Each is a student
        named pruned50 ... with its baseline (fine-tuned with CE), distilled student (from the unpruned teacher) and
        control, all from the same pruned weights. A teacher it cannot prune is said in one line; the others go on.
        kdc sweep: each pruned student sweeps into --out/pruned50 ... beside the named ones.
        """,
        STUDENTS,
    )  # fmt: skip
    prune_to_ms: float | None = setting(
        None, "Also the teacher pruned just enough to run within this many ms at batch 1 here: the least ratio (0.05 "
        "steps) whose exported file meets it on onnxruntime-cpu with one thread, timed as kdc benchmark times a "
        "point, added to --prune.", STUDENTS, low=0.001, high=100_000.0, sweep=COMPRESS_ONLY,
    )  # fmt: skip
    teacher_weights: str | None = setting(
        None, "Use this trained teacher checkpoint (.pt) instead of training one.", TEACHER, path=True
    )
    retrain_teacher: bool = setting(False, "Train the teacher even when an identical one was trained before.", TEACHER, sweep=RUN)
    teacher_smoothing: float = setting(0.0, "Label smoothing of the teacher's own training (0 = none).", TEACHER, low=0.0, high=0.9)
    teacher_ema: float | None = setting(
        None, "Keep an exponential moving average of the teacher's weights with this decay, e.g. 0.999 (timm's "
        "ModelEmaV3, warm-up on); it is what is validated and kept. 0 = off.", TEACHER, low=0.0, high=0.99999,
        per_dataset="teacher_ema",
    )  # fmt: skip
    teacher_select: str | None = setting(
        None, "The teacher's kept epoch: accuracy (best validation accuracy) or loss (lowest validation loss).",
        TEACHER, choices=SELECTIONS, per_dataset="teacher_select",
    )  # fmt: skip
    teacher_balance: bool = setting(
        False, "Weight the teacher's cross-entropy by inverse class frequency in its training images, so every class "
        "counts alike (chest-xray's train split is 3:1).", TEACHER,
    )  # fmt: skip
    teacher_aux: bool = setting(
        True, "Also train the teacher on the dataset's auxiliary classes where it has some (cifar3: CIFAR-10's 7 other "
        "classes, training batches only). The students never see them.", TEACHER,
    )  # fmt: skip
    temperature: float = setting(
        4.0, "Temperature T that softens both logit sets in the KL term (> 0).", STUDENTS, flags=("--T", "--temperature"),
        low=0.05, high=100.0, sweep=GRID, grid=(1.0, 4.0),
    )  # fmt: skip
    alpha: float = setting(0.5, "Weight of the KL term in [0, 1]; CE gets 1 - alpha.", STUDENTS, low=0.0, high=1.0, sweep=GRID, grid=(0.5, 0.9))
    beta: float = setting(0.3, "Weight of the feature term (>= 0); 0 = logits-only distillation.", STUDENTS, sweep=GRID, grid=(0.0, 0.3), **WEIGHT)
    kd_loss: str = setting("kl", KD_LOSS_HELP, STUDENTS, choices=KD_LOSSES, sweep=GRID, grid=("kl",))
    dist_inter: float = setting(KdLoss.dist_inter, "DIST: weight of the per-image (inter-class) relation (paper: 1).", STUDENTS, **WEIGHT)
    dist_intra: float = setting(KdLoss.dist_intra, "DIST: weight of the per-class (intra-class) relation (paper: 1).", STUDENTS, **WEIGHT)
    dkd_target: float = setting(KdLoss.dkd_target, "DKD: weight of the target-class term TCKD (paper's alpha: 1).", STUDENTS, **WEIGHT)
    dkd_nontarget: float = setting(
        KdLoss.dkd_nontarget, "DKD: weight of the non-target term NCKD (paper's beta: 8 on CIFAR-100).", STUDENTS, **WEIGHT
    )
    dkd_warmup: float = setting(
        KdLoss.dkd_warmup, "DKD: share of the training steps over which its term ramps up linearly from 0 (paper: 20 of "
        "240 epochs).", STUDENTS, low=0.0, high=1.0,
    )  # fmt: skip
    student_stem: str = setting(
        "timm", "timm: students as timm builds them. auto: a stride-1 stem for inputs of 64 px or less where the "
        "student has a strided conv_stem (MobileNets, EfficientNets; ResNets are left as built), the teacher's own "
        "rule. Baseline, distilled student and control share it; it costs latency, which kdc benchmark shows.",
        STUDENTS, choices=STEMS,
    )  # fmt: skip
    augment: str = setting(
        "crop", "Views of every training: crop (reflect-padded crop of size/8 + flip: the CIFAR recipe) or rrc (per "
        "image: random-resized crop of 35-100% of the area, rotation up to 10 degrees, flip, contrast and brightness "
        "jitter), on the device for whole batches.",
        DATA, choices=AUGMENTATIONS,
    )  # fmt: skip
    unlabeled: str | None = setting(
        None, """
        Images without labels for the distilled students: a folder (any layout; sub-folders are not read as
        classes), or aux for cifar3's 7 other CIFAR-10 classes. They are learnt from the teacher's outputs alone (no
        cross-entropy on them), so each epoch of a distilled student has more steps; the baseline and the control
        never see them, and the verdict says so. Not with --kd-loss dkd or --stream.
        """,
        STUDENTS,
    )  # fmt: skip
    mixup: float = setting(
        0.0, "Mixup for the students, 0 = off: each batch is mixed with itself reversed, weight ~ Beta(m, m), labels "
        "mixed alike. The baseline, the control and the distilled student see the same mixed images, and so does the "
        "teacher (consistent teaching, Beyer et al. 2022). The teacher trains without it.", STUDENTS, low=0.0, high=10.0,
    )  # fmt: skip
    control: str = setting(
        "label-smoothing", """
        label-smoothing: also train the student with CE and label smoothing, same start, views and
        schedule, its target putting alpha x the teacher's average probability off the true class at T, as the
        distilled student's target does, but spread evenly. It tells a gain that is the teacher's knowledge from one
        that is plain regularisation (Yuan et al., CVPR 2020). none: skip it.
        """, STUDENTS, choices=CONTROLS, sweep=RUN,
    )  # fmt: skip
    epochs: int | None = setting(None, "Epochs per training.", TRAINING, per_dataset="epochs", **EPOCHS)
    teacher_epochs: int | None = setting(
        None, "Epochs for the teacher (default: --epochs times the dataset's factor; cifar3's teacher also learns 7 "
        "more classes).", TEACHER, per_dataset="teacher_epoch_factor", unit="x", **EPOCHS,
    )  # fmt: skip
    batch_size: int = setting(128, "Batch size of every training (the teacher's too, unless --teacher-batch-size).", TRAINING, **BATCH)
    teacher_batch_size: int | None = setting(
        None, "The teacher's own batch size (default: --batch-size), its peak learning rate scaled by the square root "
        "of the ratio to --batch-size. For a GPU that small images leave idle; fewer steps per epoch, so check the "
        "teacher's accuracy.", TEACHER, **BATCH,
    )  # fmt: skip
    lr: float = setting(2e-3, "Peak learning rate (AdamW, one-cycle schedule).", TRAINING, low=1e-7, high=10.0)
    weight_decay: float = setting(0.05, "AdamW weight decay.", TRAINING, low=0.0, high=10.0)
    val_fraction: float = setting(
        0.1, "Share of train held out (stratified, fixed split) to pick the best epoch (the test split never is).", DATA,
        low=0.01, high=0.5,
    )  # fmt: skip
    stream: bool = setting(
        False, "Read a folder's images from disk batch by batch (DataLoader workers) instead of holding them in "
        "memory; the same views in the same order. Automatic when the folder would not fit in memory.", DATA, sweep=RUN,
    )  # fmt: skip
    seed: int = setting(
        0, "Seed for weights, data order and augmentation (>= 0); the same seed on CPU gives the same numbers. kdc "
        "sweep: the first seed, the teacher's.", TRAINING, low=0, high=MAX_SEED,
    )  # fmt: skip
    device: str = setting("auto", "auto, cpu or cuda (bfloat16 mixed precision on CUDA).", HARDWARE, choices=DEVICES, sweep=RUN)
    compile: str = setting(
        "auto", "How each training step runs. graph: one CUDA graph of the forward and backward, replayed for every "
        "batch (CUDA, one process); on: torch.compile of the networks; off: eager. auto (default): graph on one CUDA "
        "GPU, off on CPU and with several processes.", HARDWARE, choices=COMPILE_CHOICES, sweep=RUN,
    )  # fmt: skip
    artifacts: str = setting("artifacts", "Artifacts root; each run gets a new sub-folder.", OUTPUT, sweep=RUN, path=True)
    out: str | None = setting(
        None, "Exact run folder: a new or empty folder, or an earlier run (replaced once this one completes); any "
        "other folder is refused.", OUTPUT, sweep=COMPRESS_ONLY, path=True,
    )  # fmt: skip
    int8: bool = setting(
        False, "Also write INT8 and FP16 versions of each distilled student and of the teacher (see kdc quantize).",
        OUTPUT, sweep=COMPRESS_ONLY,
    )  # fmt: skip
    from_sweep: str | None = setting(
        None, "A finished kdc sweep folder: train the cell it chose on validation (T, alpha, beta), with the sweep's "
        "data, models, schedule, seed and teacher (reused from its cache). Options that contradict the sweep are "
        "refused.", OUTPUT, sweep=COMPRESS_ONLY, path=True,
    )  # fmt: skip

    def resolved(self) -> "CompressConfig":
        """Validate (each field's range and choices, then what combines badly) and fill the dataset-dependent defaults."""
        spec = resolve_spec(self.dataset)
        for name, (_, how) in settings().items():
            value = getattr(self, name)
            if name == "teacher_select":
                value = value or spec.teacher_select
            if value is None:
                continue
            flag = how.flag_names(name)[0]
            if how.low is not None and how.high is not None:
                _check_range(flag, value, how.low, how.high)
            if how.choices and value not in how.choices:
                raise KdcError(f"{flag} must be {one_of(how.choices)}, not '{value}'")
        self._check_kd_weights()
        students = split_students(self.student or spec.student)
        if self.teacher_weights and self.pretrained:
            raise KdcError("--pretrained and --teacher-weights both set the teacher's weights: pick one")
        if self.unlabeled is not None:
            self._check_unlabeled()
        self.prune_ratios  # noqa: B018 (refused in one line here, before anything loads)
        self._check_pruned_names(students)
        if self.pretrained_students is not None:
            unknown = [name for name in split_students(self.pretrained_students) if name not in students]
            if unknown:
                raise KdcError(f"--pretrained-students names {', '.join(unknown)}, not a --student of this run ({', '.join(students)})")
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

    def _check_kd_weights(self) -> None:
        """A DIST or DKD term whose weights are all 0 would teach nothing: said before anything trains."""
        silent = {"dist": ("--dist-inter", "--dist-intra"), "dkd": ("--dkd-target", "--dkd-nontarget")}.get(self.kd_loss)
        weights = {"dist": (self.dist_inter, self.dist_intra), "dkd": (self.dkd_target, self.dkd_nontarget)}.get(self.kd_loss)
        if silent and weights and not any(weights) and self.alpha > 0:
            raise KdcError(
                f"--kd-loss {self.kd_loss} with {' and '.join(f'{f} 0' for f in silent)} is a logit term that is 0 for every "
                f"image, weighted by --alpha {self.alpha:g}: the distilled student would not learn from the teacher's outputs. "
                f"Give one of them a weight, or use --alpha 0"
            )

    @staticmethod
    def _check_pruned_names(students: list[str]) -> None:
        """A --student name such as pruned50 is the teacher pruned: its percent is one --prune takes, spelled once."""
        from kdcompress.core.roles import pruned_name, pruned_ratio

        for name in students:
            ratio = pruned_ratio(name)
            if ratio is not None and not (0.05 <= ratio <= 0.95 and name == pruned_name(ratio)):
                raise KdcError(f"--student {name}: the teacher pruned takes a percent from 5 to 95 without a leading 0, such as pruned50")

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
        """The timm student architectures, in the order given (the dataset's default ones when none was given); a
        --student name such as pruned50 is the teacher pruned, not one of them."""
        from kdcompress.core.roles import pruned_ratio

        return [name for name in self._given_students() if pruned_ratio(name) is None]

    @property
    def students(self) -> list[str]:
        """Every student: those --student names (pruned50 among them: the teacher pruned), then the teacher pruned at
        each --prune ratio not already named."""
        from kdcompress.core.roles import pruned_name

        given = self._given_students()
        return given + [name for name in map(pruned_name, self.prune_ratios) if name not in given]

    def _given_students(self) -> list[str]:
        return split_students(self.student or resolve_spec(self.dataset).student)

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
        """The logit term of the distillation: --kd-loss, with every knob KdLoss has, read from the field of its name."""
        return KdLoss(self.kd_loss, **{f.name: getattr(self, f.name) for f in fields(KdLoss) if f.name != "kind"})

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
        for name, (_, how) in settings().items():
            value = getattr(self, name)
            if name in leave_out:
                continue
            if (how.path or (name == "unlabeled" and value != UNLABELED_AUX)) and value is not None:
                value = str(Path(value).absolute())
            values[name.replace("_", "-")] = value
        return values


def sweep_settings(kind: str) -> tuple[str, ...]:
    """The CompressConfig fields a sweep treats as kind (SHARED, RUN, GRID or COMPRESS_ONLY), in declaration order."""
    return tuple(name for name, (_, how) in settings().items() if how.sweep == kind)


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

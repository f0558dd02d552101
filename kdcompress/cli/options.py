"""The options `kdc compress` and `kdc sweep` share: one definition each, its default read from the config dataclass.

Importing this module imports no torch or onnxruntime, so `kdc --help` stays instant.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import typer

from kdcompress.train.config import CompressConfig, SweepConfig
from kdcompress.core.errors import KdcError
from kdcompress.data.specs import DATASETS

DEFAULTS = {f.name: f.default for f in fields(CompressConfig)}  # every option's default, stated once: in the dataclass
SWEEP_DEFAULTS = {f.name: f.default for f in fields(SweepConfig)}


# The help panels of `kdc compress --help` and `kdc sweep --help`, in the order they print.
DATA, TEACHER_PANEL, STUDENTS, TRAINING, HARDWARE, OUTPUT = (
    "Data", "Teacher", "Students and distillation", "Training", "Hardware", "Output",
)  # fmt: skip
PANELS = {
    DATA: ("dataset", "data_dir", "image_size", "augment", "val_fraction", "stream"),
    TEACHER_PANEL: (
        "teacher", "pretrained", "teacher_weights", "retrain_teacher", "teacher_aux", "teacher_smoothing",
        "teacher_ema", "teacher_select", "teacher_balance", "teacher_epochs", "teacher_batch_size",
    ),
    STUDENTS: (
        "student", "pretrained_student", "pretrained_students", "prune", "prune_to_ms", "student_stem", "temperature", "alpha", "beta", "kd_loss", "dist_inter",
        "dist_intra", "dkd_target", "dkd_nontarget", "dkd_warmup", "unlabeled", "mixup", "control",
    ),
    TRAINING: ("epochs", "batch_size", "lr", "weight_decay", "seed"),
    HARDWARE: ("device", "compile"),
    OUTPUT: ("artifacts", "out", "int8", "from_sweep"),
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


def option(name: str, *flags: str, help: str) -> Any:
    """A typer option whose default is CompressConfig's own, in its help panel."""
    default = DEFAULTS[name]
    if name == "artifacts":
        default = Path(default)
    return typer.Option(default, *flags, help=help, rich_help_panel=PANEL_OF[name])


def grid_default(name: str) -> str:
    """A sweep grid's default as the comma-separated text the option takes ('1,4')."""
    return ",".join(f"{v:g}" for v in SWEEP_DEFAULTS[name])


def path_text(value: Optional[Path]) -> Optional[str]:
    """A path option as the config dataclasses hold it (a string, or None)."""
    return str(value) if value is not None else None


def compress_config(params: dict[str, Any], leave_out: tuple[str, ...] = ()) -> CompressConfig:
    """The CompressConfig of a command's parsed parameters (click's ctx.params): every parameter named like one of
    its fields, paths as text. One construction for compress and sweep, so a new setting costs one field and one option."""
    values = {name: path_text(v) if isinstance(v, Path) else v for name, v in params.items() if name in DEFAULTS and name not in leave_out}
    return CompressConfig(**values)


# Options shared by compress and sweep (one definition, so their help and defaults cannot drift apart).
DATASET = option("dataset", "--dataset", "-d", help="digits (offline default), cifar3, chest-xray, or folder.")
DATA_DIR = option(
    "data_dir", "--data-dir", help="Where the data is: cifar3 looks for cifar-10-batches-py here (default ./data, "
    "downloaded when absent); chest-xray and folder need it."
)
def per_dataset(field: str, unit: str = "") -> str:
    """'digits 16, cifar3 32, ...': a field's default for each dataset, read from data/specs.py (never restated)."""
    return ", ".join(f"{name} {getattr(spec, field)}{unit}" for name, spec in DATASETS.items())


IMAGE_SIZE = option("image_size", "--image-size", help=f"Input side in pixels (default per dataset: {per_dataset('image_size')}).")
TEACHER = option("teacher", "--teacher", help=f"Teacher: any timm model name (default per dataset: {per_dataset('teacher')}).")
STUDENT = option(
    "student", "--student", help="Student(s): timm model names, comma-separated for several (resnet18,resnet10t); each gets its "
    "own fair start, baseline, distilled student and control, from one teacher. Default per dataset: "
    f"{per_dataset('student')}. kdc sweep: a sweep folder per student, OUT/STUDENT.",
)
PRETRAINED = option("pretrained", "--pretrained/--no-pretrained", help="Start the teacher from timm's ImageNet weights (downloads).")
PRETRAINED_STUDENT = option("pretrained_student", "--pretrained-student/--no-pretrained-student", help="Start every student from ImageNet weights.")
PRETRAINED_STUDENTS = option(
    "pretrained_students", "--pretrained-students", help="Start only these students (comma-separated, among --student) "
    "from ImageNet weights, the others from scratch: tf_efficientnet_lite0 beside resnet10t, say."
)
TEACHER_WEIGHTS = option("teacher_weights", "--teacher-weights", help="Use this trained teacher checkpoint (.pt) instead of training one.")
RETRAIN_TEACHER = option("retrain_teacher", "--retrain-teacher/--no-retrain-teacher", help="Train the teacher even when an identical one was trained before.")
TEACHER_AUX = option(
    "teacher_aux", "--teacher-aux/--no-teacher-aux", help="Also train the teacher on the dataset's auxiliary classes where it "
    "has some (cifar3: CIFAR-10's 7 other classes, training batches only). The students never see them."
)
EPOCHS = option("epochs", "--epochs", help=f"Epochs per training (default per dataset: {per_dataset('epochs')}).")
TEACHER_EPOCHS = option(
    "teacher_epochs", "--teacher-epochs", help="Epochs for the teacher (default: --epochs times, per dataset: "
    f"{per_dataset('teacher_epoch_factor', 'x')}; cifar3's teacher also learns 7 more classes)."
)
BATCH_SIZE = option("batch_size", "--batch-size", help="Batch size of every training (the teacher's too, unless --teacher-batch-size).")
TEACHER_BATCH_SIZE = option(
    "teacher_batch_size", "--teacher-batch-size", help="The teacher's own batch size (default: --batch-size), its peak "
    "learning rate scaled by the square root of the ratio to --batch-size. For a GPU that small images leave idle; "
    "fewer steps per epoch, so check the teacher's accuracy."
)
LR = option("lr", "--lr", help="Peak learning rate (AdamW, one-cycle schedule).")
WEIGHT_DECAY = option("weight_decay", "--weight-decay", help="AdamW weight decay.")
VAL_FRACTION = option("val_fraction", "--val-fraction", help="Share of train held out to pick the best epoch (the test split never is).")
DEVICE = option("device", "--device", help="auto, cpu or cuda (bfloat16 mixed precision on CUDA).")
COMPILE = option(
    "compile", "--compile", help="How each training step runs. graph: one CUDA graph of the forward and backward, "
    "replayed for every batch (CUDA, one process); on: torch.compile of the networks; off: eager. auto (default): "
    "graph on one CUDA GPU, off on CPU and with several processes."
)
AUGMENT = option(
    "augment", "--augment", help="Views of every training: crop (reflect-padded crop of size/8 + flip: the CIFAR recipe) "
    "or rrc (per image: random-resized crop of 35-100% of the area, rotation up to 10 degrees, flip, contrast and "
    "brightness jitter), on the device for whole batches."
)
STUDENT_STEM = option(
    "student_stem", "--student-stem", help="timm: students as timm builds them. auto: a stride-1 stem for inputs of "
    "64 px or less where the student has a strided conv_stem (MobileNets, EfficientNets; ResNets are left as built), "
    "the teacher's own rule. Baseline, distilled student and control share it; it costs latency, which kdc benchmark shows."
)
KD_LOSS_HELP = (
    "kl: T^2 * KL(softmax(teacher/T) || softmax(student/T)) (Hinton 2015). dist: T^2 * (1 - Pearson correlation) of the "
    "softened outputs, per image (--dist-inter) and per class over the batch (--dist-intra) (DIST, Huang 2022): the "
    "teacher's rankings, not its exact probabilities. dkd: the KL split at the true class, T^2 * (--dkd-target * TCKD + "
    "--dkd-nontarget * NCKD), ramped up over --dkd-warmup (DKD, Zhao 2022); with two classes NCKD is empty."
)
DIST_INTER = option("dist_inter", "--dist-inter", help="DIST: weight of the per-image (inter-class) relation (paper: 1).")
DIST_INTRA = option("dist_intra", "--dist-intra", help="DIST: weight of the per-class (intra-class) relation (paper: 1).")
DKD_TARGET = option("dkd_target", "--dkd-target", help="DKD: weight of the target-class term TCKD (paper's alpha: 1).")
DKD_NONTARGET = option("dkd_nontarget", "--dkd-nontarget", help="DKD: weight of the non-target term NCKD (paper's beta: 8 on CIFAR-100).")
DKD_WARMUP = option("dkd_warmup", "--dkd-warmup", help="DKD: share of the training steps over which its term ramps up linearly from 0 (paper: 20 of 240 epochs).")
TEACHER_SMOOTHING = option("teacher_smoothing", "--teacher-smoothing", help="Label smoothing of the teacher's own training (0 = none).")
TEACHER_EMA = option(
    "teacher_ema", "--teacher-ema", help="Keep an exponential moving average of the teacher's weights with this decay, "
    "e.g. 0.999 (timm's ModelEmaV3, warm-up on); it is what is validated and kept. 0 = off; default per dataset: "
    "digits 0.99, others 0."
)
TEACHER_BALANCE = option(
    "teacher_balance", "--teacher-balance/--no-teacher-balance", help="Weight the teacher's cross-entropy by inverse "
    "class frequency in its training images, so every class counts alike (chest-xray's train split is 3:1)."
)
TEACHER_SELECT = option(
    "teacher_select", "--teacher-select", help="The teacher's kept epoch: accuracy (best validation accuracy) or loss (lowest validation loss); default per "
    "dataset: digits loss, others accuracy."
)
PRUNE = option(
    "prune", "--prune", help="Also students carved from the trained teacher: ratios such as 0.5,0.8, each the share of "
    "channels Torch-Pruning removes from every prunable layer group (L2 magnitude; the classifier kept). Each is a "
    "student named pruned50 ... with its baseline (fine-tuned with CE), distilled student (from the unpruned teacher) "
    "and control, all from the same pruned weights. A teacher it cannot prune is said in one line; the others go on."
)
PRUNE_TO_MS = option(
    "prune_to_ms", "--prune-to-ms", help="Also the teacher pruned just enough to run within this many ms at batch 1 here: "
    "the least ratio (0.05 steps) whose exported file meets it on onnxruntime-cpu with one thread, timed as kdc "
    "benchmark times a point, added to --prune."
)
UNLABELED = option(
    "unlabeled", "--unlabeled", help="Images without labels for the distilled students: a folder (any layout; "
    "sub-folders are not read as classes), or aux for cifar3's 7 other CIFAR-10 classes. They are learnt from the "
    "teacher's outputs alone (no cross-entropy on them), so each epoch of a distilled student has more steps; the "
    "baseline and the control never see them, and the verdict says so. Not with --kd-loss dkd or --stream."
)
MIXUP = option(
    "mixup", "--mixup", help="Mixup for the students, 0 = off: each batch is mixed with itself reversed, weight ~ "
    "Beta(m, m), labels mixed alike. The baseline, the control and the distilled student see the same mixed images, "
    "and so does the teacher (consistent teaching, Beyer et al. 2022). The teacher trains without it."
)
CONTROL = option(
    "control", "--control", help="label-smoothing: also train the student with CE and label smoothing, same start, views and "
    "schedule, its target putting alpha x the teacher's average probability off the true class at T, as the distilled "
    "student's target does, but spread evenly. It tells a gain that is the teacher's knowledge from one that is plain "
    "regularisation (Yuan et al., CVPR 2020). none: skip it."
)
ARTIFACTS = option("artifacts", "--artifacts", help="Artifacts root; each run gets a new sub-folder.")
STREAM = option(
    "stream", "--stream/--no-stream", help="Read a folder's images from disk batch by batch (DataLoader workers) instead of holding them "
    "in memory; the same views in the same order. Automatic when the folder would not fit in memory."
)
NPROC = typer.Option(
    1, "--nproc", min=1, rich_help_panel=HARDWARE, help="Processes to train with on this machine, one per GPU (or CPU share): starts torchrun "
    "--standalone --nproc-per-node N for you. For several machines call torchrun yourself (see the README)."
)


JSON = typer.Option(False, "--json", rich_help_panel=OUTPUT, help="Print the result as JSON on stdout instead of the table.")


def without_nproc(argv: list[str]) -> list[str]:
    """The command line without its --nproc option: what each process started by torchrun runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def names(text: str) -> tuple[str, ...]:
    """'kl, dist' -> ('kl', 'dist'); each is checked where the config is resolved."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def numbers(flag: str, text: str) -> tuple[float, ...]:
    """'1,4,8' -> (1.0, 4.0, 8.0); anything else is a one-line error."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise KdcError(f"{flag} takes comma-separated numbers such as 1,4,8, got '{text}'") from None

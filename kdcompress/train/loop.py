"""One training loop for every run: teacher, baseline and distilled student.

Data lives on the device as one uint8 tensor; each batch is normalised and augmented as a
whole. Shuffling and augmentation draw from a generator seeded with the run's seed, so two
runs with the same seed see the same images in the same order with the same crops.
"""

from __future__ import annotations

import copy
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.utils import ModelEmaV3

from kdcompress.core.errors import KdcError
from kdcompress.core.reporter import Reporter
from kdcompress.data.dataset import Dataset, batches
from kdcompress.data.image_files import ImageFiles
from kdcompress.deploy.preprocessing import Preprocessing
from kdcompress.train import losses
from kdcompress.train.accel import autocast, autotune, compiled, create_optimizer, cudnn_autotune, eager, grad_scaler, resolve_precision, step_mode
from kdcompress.train.collectives import broadcast_buffers, data_parallel, gather_rows, shard
from kdcompress.train.objectives import LiveTeacher, trainable_parameters
from kdcompress.train.views import ViewStream, stats, to_input

Images = np.ndarray | ImageFiles  # uint8 N x C x H x W, in memory or on disk
REPORT_EVERY = 5  # steps between progress updates on CPU
REPORT_EVERY_CUDA = 25  # on CUDA, where each update waits for the device to finish its queued work
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before a CUDA graph is captured (cuDNN autotuning, lazy state)


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and schedule shared by all runs of one compress call."""

    epochs: int
    batch_size: int
    lr: float  # peak learning rate of the one-cycle schedule (AdamW)
    weight_decay: float
    seed: int
    device: str  # "cpu" or "cuda" (already resolved)
    precision: str = "auto"  # auto | bfloat16 | float16 | float32 (CUDA only; the CPU trains in float32)
    compile: str = "off"  # auto | on | off | graph: how each step runs (accel.step_mode; TrainStep)
    augment: str = "crop"  # crop (padding crop + flip) | rrc (random-resized crop, rotation, intensity): views.views
    ema: float = 0.0  # decay of an exponential moving average of the weights, kept and evaluated instead; 0 = none
    select: str = "accuracy"  # the epoch kept: best validation "accuracy", or lowest validation "loss"
    mixup: float = 0.0  # Beta(m, m) concentration of the mixup weight of each batch; 0 = no mixup
    classes: int = 0  # the students' classes: the width of the mixed label vectors (needed when mixup > 0)
    world_size: int = 1  # processes training this run together under DDP; each takes batch_size / world_size images
    rank: int = 0  # this process's place among them (distributed.World)


@dataclass
class FitResult:
    """What one training run produced: its best epoch (restored into the model) and its history."""

    best_epoch: int
    best_val_accuracy: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    step: str = "eager"  # how its steps ran: eager, compile, graph, or eager after a failed graph capture (why)
    cudnn_autotune: bool | None = None  # whether cuDNN timed its algorithms (accel.autotune); None off CUDA

    def record(self) -> dict[str, Any]:
        """What a training leaves in the manifest (or a sweep's run file): best epoch, timing, steps, history."""
        return {
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "train_seconds": round(self.train_seconds, 2),
            "step": self.step,
            "cudnn_autotune": self.cudnn_autotune,
            "history": self.history,
        }


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: Images, prep: Preprocessing, device: str, batch_size: int = 256, amp: bool = False
) -> np.ndarray:
    """Logits of model (in eval mode) for uint8 images; float32 unless amp (mixed precision on CUDA)."""
    was_training = model.training
    model.eval()
    mean, std = stats(prep, device)
    outputs = []
    for chunk in batches(images, batch_size):
        batch = torch.from_numpy(chunk).to(device)
        with autocast(device, resolve_precision(device) if amp else "float32"):
            logits = model(to_input(batch, mean, std).contiguous(memory_format=torch.channels_last))
        outputs.append(logits.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def shared_logits(model: nn.Module, images: Images, prep: Preprocessing, settings: TrainSettings, amp: bool = False) -> np.ndarray:
    """predict_logits for a run trained by settings.world_size processes: each scores its share, all get every row."""
    if settings.world_size == 1:
        return predict_logits(model, images, prep, settings.device, amp=amp)
    part = shard(len(images), settings.rank, settings.world_size)
    return gather_rows(predict_logits(model, images[part], prep, settings.device, amp=amp))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float((logits.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


def mean_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """losses.cross_entropy of float logits against integer labels, for numpy arrays (0 for no images)."""
    return float(losses.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))) if len(labels) else 0.0


def warmup_fraction(total_steps: int) -> float:
    """The one-cycle schedule's warm-up share: 25%, except for runs of exactly 4 steps.

    OneCycleLR's warm-up phase ends at pct_start * total_steps - 1 and it divides by that length:
    25% of 4 steps makes it 0 (a ZeroDivisionError, e.g. --batch-size 300 --epochs 1 on digits).
    Those runs warm up over 1.5 steps instead; every other length keeps 25%.
    """
    return 0.375 if total_steps == 4 else 0.25


DIVERGED_CE = 10.0  # an epoch's mean cross-entropy above this many times chance level (ln classes) ...
DIVERGED_RISE = 3.0  # ... and this many times where the training had got to: diverged


def check_diverged(
    label: str, epoch: int, means: dict[str, float], classes: int, lr: float, ended: bool, reached: float | None = None,
) -> None:  # fmt: skip
    """Stop a training whose loss is no longer a number, or (at the end of an epoch) whose cross-entropy exploded.

    Chance level, a uniform guess, is ln(classes); a too-high learning rate drives the cross-entropy to hundreds or
    millions. An untrained model may start far above chance, though: MobileNetV4 from scratch starts near 7x chance
    on two classes (large initial logits) and takes more than a few steps to come down. So an epoch diverged when
    its mean is over DIVERGED_CE x chance *and* over DIVERGED_RISE x `reached`, the lowest mean cross-entropy of an
    earlier epoch (for the first epoch: its first step's, the untrained model's). A high loss that is not rising is
    left to the validation score, which judges it; one that ran away stops the training before a broken model is
    exported as if it were fine. Without `reached` only the chance-level limit applies.
    """
    loss, ce = means["loss"], means.get("ce", means["loss"])
    if not (np.isfinite(loss) and np.isfinite(ce)):
        raise KdcError(f"{label}: the loss became {loss} in epoch {epoch}: the training diverged; lower --lr (now {lr:g}) and retry")
    chance = float(np.log(max(2, classes)))
    if ended and ce > DIVERGED_CE * chance and (reached is None or ce > DIVERGED_RISE * reached):
        rose = "" if reached is None else f" and {ce / reached:.3g}x the {reached:.3g} it had reached"
        raise KdcError(
            f"{label}: the training diverged: its cross-entropy averaged {ce:.3g} over epoch {epoch}, over "
            f"{DIVERGED_CE:g}x chance level ({chance:.2f}){rose}; lower --lr (now {lr:g}) and retry"
        )


def fit(
    objective: nn.Module,
    data: Dataset,
    prep: Preprocessing,
    settings: TrainSettings,
    reporter: Reporter,
    label: str,
) -> FitResult:
    """Train objective.student; the epoch with the best validation score is restored at the end.

    The score is validation accuracy, or (settings.select == "loss") minus the validation cross-entropy.
    With settings.ema > 0 the weights evaluated, kept and returned are an exponential moving
    average of the trained ones (timm's ModelEmaV3), updated after every step.

    With settings.world_size > 1 (under torchrun) each rank trains on its share of every global batch and DDP
    averages the gradients (`collectives.data_parallel`); validation is scored in shards and gathered, so every
    rank keeps the same epoch and ends with the same weights.
    """
    device = settings.device
    torch.manual_seed(settings.seed)
    objective.to(device).to(memory_format=torch.channels_last)
    student = objective.student
    stream = ViewStream(data, prep, settings)
    step = TrainStep(objective, settings, settings.epochs * stream.steps_per_epoch)
    average = ModelEmaV3(student, decay=settings.ema, use_warmup=True) if settings.ema > 0 else None
    evaluated = average.module if average is not None else student
    history: list[dict[str, float]] = []
    best = _Best(settings.select)
    started = time.perf_counter()
    status = ""
    with data_parallel(objective, device) if settings.world_size > 1 else nullcontext(), step.ready(), \
            reporter.progress(label, total=settings.epochs * stream.steps_per_epoch) as advance:  # fmt: skip
        reached: float | None = None  # the lowest cross-entropy so far (check_diverged)
        for epoch in range(1, settings.epochs + 1):
            epoch_start = time.perf_counter()
            means, running, reached = _train_epoch(
                objective, stream, step, average, epoch, settings, label, len(data.classes), advance, status, reached
            )
            if settings.world_size > 1:  # each rank's last step moved its own BatchNorm statistics: take rank 0's
                broadcast_buffers(student)
                broadcast_buffers(evaluated)
            record = {"epoch": epoch, **means, **_validate(student, evaluated, data, prep, settings)}
            record.update(lr=step.scheduler.get_last_lr()[0], seconds=time.perf_counter() - epoch_start)
            record["val_seconds"] = record.pop("val_seconds")  # keep the record's key order: seconds, then val_seconds
            history.append(record)
            best.offer(record, evaluated)
            status = f" val {record['val_accuracy']:.1%} (kept {best.val:.1%} @{best.epoch})"
            advance(0, status=f"ep {epoch}/{settings.epochs}{status} | {running}")
    if step.fallback:
        reporter.warn(f"{label}: {step.fallback}")
    assert best.state is not None
    student.load_state_dict(best.state)
    student.eval()
    ran = f"eager ({step.fallback})" if step.fallback else step.mode
    tuned = step.autotune if device == "cuda" else None
    return FitResult(best.epoch, best.val, time.perf_counter() - started, history, ran, tuned)


def _train_epoch(
    objective: nn.Module, stream: Any, step: "TrainStep", average: Any, epoch: int, settings: TrainSettings,
    label: str, classes: int, advance: Any, status: str, reached: float | None,
) -> tuple[dict[str, float], str, float | None]:  # fmt: skip
    """One epoch of steps; the running means of the loss parts, read back every few steps, their text, and the
    lowest cross-entropy reached so far (`reached`, this epoch's mean included; before the first epoch, None:
    then the first step's cross-entropy is read back once and stands for the untrained model)."""
    report_every = REPORT_EVERY if settings.device == "cpu" else REPORT_EVERY_CUDA
    steps_per_epoch = stream.steps_per_epoch
    objective.train()
    sums: dict[str, torch.Tensor] = {}  # on the device: read back only every few steps (no per-step sync)
    means: dict[str, float] = {}
    running, reported = "", 0
    for index, (images, labels) in enumerate(stream.epoch()):
        loss, parts = step(images, labels, (epoch - 1) * steps_per_epoch + index)
        if average is not None:
            average.update(objective.student, step=(epoch - 1) * steps_per_epoch + index)
        for name, value in {"loss": loss, **parts}.items():
            sums[name] = sums[name] + value.detach().float() if name in sums else value.detach().float()
        if reached is None:
            reached = float(sums.get("ce", sums["loss"]))
        if index % report_every == report_every - 1 or index == steps_per_epoch - 1:
            means = {k: float(v) / (index + 1) for k, v in sums.items()}
            check_diverged(label, epoch, means, classes, settings.lr, ended=index == steps_per_epoch - 1, reached=reached)
            running = " ".join(f"{k} {v:.3f}" for k, v in means.items())
            advance(index + 1 - reported, status=f"ep {epoch}/{settings.epochs}{status} | {running}")
            reported = index + 1
    if means:
        reached = min(reached, means.get("ce", means["loss"])) if reached is not None else means.get("ce", means["loss"])
    return means, running, reached


def _validate(student: nn.Module, evaluated: nn.Module, data: Dataset, prep: Preprocessing, settings: TrainSettings) -> dict[str, float]:
    """Validation accuracy and cross-entropy of the evaluated weights, and the seconds the pass took.

    Scored on the dataset's own classes: outputs beyond them are auxiliary classes (a teacher's). The
    epoch's last loss readout waited for its steps, so val_seconds is the validation pass alone.
    """
    val_start = time.perf_counter()
    with eager(student):
        val_logits = shared_logits(evaluated, data.val_x, prep, settings, amp=True)[:, : len(data.classes)]
    val_acc, val_loss = accuracy(val_logits, data.val_y), mean_cross_entropy(val_logits, data.val_y)
    return {"val_accuracy": val_acc, "val_loss": val_loss, "val_seconds": time.perf_counter() - val_start}


class _Best:
    """The epoch with the best validation score so far, and a copy of its weights."""

    def __init__(self, select: str) -> None:
        self.select = select
        self.state: dict[str, torch.Tensor] | None = None
        self.epoch, self.val, self.score = 0, -1.0, -np.inf

    def offer(self, record: dict[str, float], evaluated: nn.Module) -> None:
        """Keep this epoch's weights if its score (accuracy, or minus the loss with select "loss") beats the best."""
        score = -record["val_loss"] if self.select == "loss" else record["val_accuracy"]
        if score > self.score:
            self.score, self.val, self.epoch = score, record["val_accuracy"], record["epoch"]
            self.state = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}


class TrainStep:
    """One optimizer step of an objective: forward in the run's precision, backward, AdamW, one-cycle schedule.

    `fit` and benchmarks/train_throughput.py both train through it. `ready()` is the context in which
    steps run: cuDNN autotuning on CUDA, and the networks compiled when settings.compile says so.

    In "graph" mode (CUDA, one process) the forward and backward are captured once as a CUDA graph and
    replayed for every later batch, copied into the graph's fixed input tensors: one launch instead of
    thousands of small kernels. The first GRAPH_WARMUP_STEPS steps run eagerly on a side stream, as CUDA
    graph capture asks. The optimizer and the schedule stay outside the graph, so the learning rate and
    AdamW's momentum follow the one-cycle schedule exactly as in eager mode. Gradients are never reset
    after the capture: each replay overwrites them. If the capture fails, the step says why
    (`fallback`) and the run goes on eagerly.
    """

    def __init__(self, objective: nn.Module, settings: TrainSettings, total_steps: int) -> None:
        self.objective = objective
        self.device = settings.device
        self.precision = resolve_precision(settings.device, settings.precision)
        self.optimizer = create_optimizer(trainable_parameters(objective), settings.lr, settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=settings.lr, total_steps=total_steps, pct_start=warmup_fraction(total_steps)
        )
        self.scaler = grad_scaler(settings.device, self.precision)
        self.mode = step_mode(settings.compile, settings.device, settings.world_size)
        self.autotune = autotune(self.mode, total_steps)  # decided once: a failed capture's eager steps keep the same kernels
        self.fallback = ""  # why a graph capture failed (the run then went on eagerly)
        self._graph: Any = None
        self._static: dict[str, Any] = {}
        self._warmed = 0
        self._side: Any = None  # the one side stream of the warm-up steps

    def networks(self) -> list[nn.Module]:
        """The networks that run in a step: the student, and the teacher when it runs live."""
        teacher = getattr(self.objective, "teacher", None)
        live = [teacher.model] if isinstance(teacher, LiveTeacher) else []
        return [self.objective.student, *live]

    def ready(self) -> Any:
        """The context steps run in (cuDNN autotuning, compiled networks)."""
        stack = ExitStack()
        stack.enter_context(cudnn_autotune(self.device, self.autotune))
        stack.enter_context(compiled(self.networks(), self.mode == "compile"))
        return stack

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, view: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.mode != "graph":
            loss, parts = self._forward_backward(images, labels, view)
        elif self._graph is None and self._warmed < GRAPH_WARMUP_STEPS:
            self._side = self._side or torch.cuda.Stream()
            self._side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side):
                loss, parts = self._forward_backward(images, labels, view)
            torch.cuda.current_stream().wait_stream(self._side)
            self._warmed += 1
        else:
            loss, parts = self._replay(images, labels, view)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        # Detached: a caller holding the loss must not keep this step's autograd graph (and its gradient
        # accumulators, bound to the stream they ran on) alive into the next step.
        return loss.detach(), {name: value.detach() for name, value in parts.items()}

    def _forward_backward(
        self, images: torch.Tensor, labels: torch.Tensor, view: int | torch.Tensor, cache: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast(self.device, self.precision, cache):
            loss, parts = self.objective(images, labels, view)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return loss, parts

    def _replay(self, images: torch.Tensor, labels: torch.Tensor, view: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Copy the batch into the graph's inputs and replay it (capturing it first); outputs are copied out."""
        if self._graph is None and not self._capture(images, labels):
            return self._forward_backward(images, labels, view)
        static = self._static
        static["images"].copy_(images)
        static["labels"].copy_(labels)
        static["view"].fill_(view)
        self._graph.replay()
        return static["loss"].detach().clone(), {name: value.detach().clone() for name, value in static["parts"].items()}

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> bool:
        """Record forward and backward on fixed input tensors; False (and self.fallback) if CUDA refuses."""
        static = {"images": images.clone(), "labels": labels.clone(), "view": torch.zeros(1, dtype=torch.long, device=self.device)}
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                # Autocast's cast cache must be off in a capture. The backward's gradients land in the graph's
                # memory, and every replay overwrites them.
                static["loss"], static["parts"] = self._forward_backward(static["images"], static["labels"], static["view"], cache=False)
        except RuntimeError as error:
            self.mode, self.fallback = "eager", f"CUDA graph capture failed ({str(error).splitlines()[0]}); training eagerly"
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self._graph, self._static = graph, static
        return True


def clone_model(model: nn.Module) -> nn.Module:
    """An independent copy with identical weights (for baseline and distilled student)."""
    return copy.deepcopy(model)

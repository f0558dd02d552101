"""One training loop for every run: teacher, baseline and distilled student.

Data lives on the device as one uint8 tensor; each batch is normalised and augmented as a
whole. Shuffling and augmentation draw from a generator seeded with the run's seed, so two
runs with the same seed see the same images in the same order with the same crops.
"""

from __future__ import annotations

import copy
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdcompress.accel import (
    autocast,
    compiled,
    create_optimizer,
    cudnn_autotune,
    eager,
    grad_scaler,
    resolve_precision,
    should_compile,
)
from kdcompress.data import Dataset
from kdcompress.errors import KdcError
from kdcompress.objectives import LiveTeacher, trainable_parameters
from kdcompress.reporter import Reporter
from kdcompress.runtime import Preprocessing

REPORT_EVERY = 5  # steps between progress updates on CPU
REPORT_EVERY_CUDA = 25  # on CUDA, where each update waits for the device to finish its queued work


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
    compile: str = "off"  # auto | on | off: torch.compile of each network's forward_features (accel.should_compile)


@dataclass
class FitResult:
    """What one training run produced: its best epoch (restored into the model) and its history."""

    best_epoch: int
    best_val_accuracy: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What a training leaves in the manifest (or a sweep's run file): best epoch, timing, history."""
        return {
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "train_seconds": round(self.train_seconds, 2),
            "history": self.history,
        }


def to_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W -> normalised float32, the same formula as runtime.normalize."""
    return (images.float() / 255.0 - mean) / std


def _stats(prep: Preprocessing, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: np.ndarray, prep: Preprocessing, device: str, batch_size: int = 256, amp: bool = False
) -> np.ndarray:
    """Logits of model (in eval mode) for uint8 images; float32 unless amp (mixed precision on CUDA)."""
    was_training = model.training
    model.eval()
    mean, std = _stats(prep, device)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).to(device)
        with autocast(device, resolve_precision(device) if amp else "float32"):
            logits = model(to_input(batch, mean, std).contiguous(memory_format=torch.channels_last))
        outputs.append(logits.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float((logits.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Full batches per epoch: the ragged last batch is dropped (BatchNorm needs > 1 image, shapes stay static)."""
    return max(1, images // min(batch_size, images))


class ViewStream:
    """The augmented batches one run trains on, drawn from a generator seeded with the run's seed.

    Every run with the same data, seed, epochs and batch size sees the same views in the same
    order: what makes a baseline and its distilled students comparable, and what lets a teacher's
    outputs be recorded once for all of them (`record_teacher`).
    """

    def __init__(self, data: Dataset, prep: Preprocessing, settings: TrainSettings) -> None:
        device = settings.device
        # On the device the batches are made on: no index copies from the host each step. On CPU this is the
        # CPU generator, so CPU numbers are unchanged; a CUDA run draws other (equally seeded) views.
        self.generator = torch.Generator(device=device).manual_seed(settings.seed)
        self.train_x = torch.from_numpy(data.train_x).to(device)
        self.train_y = torch.from_numpy(data.train_y).to(device)
        self.mean, self.std = _stats(prep, device)
        self.flip = data.flip
        self.n = len(data.train_y)
        self.batch_size = min(settings.batch_size, self.n)
        self.steps_per_epoch = steps_per_epoch(self.n, settings.batch_size)
        self.device = device

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (normalised, augmented, channels-last images, labels) batches."""
        used = self.steps_per_epoch * self.batch_size
        order = torch.randperm(self.n, generator=self.generator, device=self.device)[:used]
        for step in range(self.steps_per_epoch):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            images = augment(to_input(self.train_x[index], self.mean, self.std), self.generator, self.flip)
            yield images.contiguous(memory_format=torch.channels_last), self.train_y[index]


def warmup_fraction(total_steps: int) -> float:
    """The one-cycle schedule's warm-up share: 25%, except for runs of exactly 4 steps.

    OneCycleLR's warm-up phase ends at pct_start * total_steps - 1 and it divides by that length:
    25% of 4 steps makes it 0 (a ZeroDivisionError, e.g. --batch-size 300 --epochs 1 on digits).
    Those runs warm up over 1.5 steps instead; every other length keeps 25%.
    """
    return 0.375 if total_steps == 4 else 0.25


def fit(
    objective: nn.Module,
    data: Dataset,
    prep: Preprocessing,
    settings: TrainSettings,
    reporter: Reporter,
    label: str,
) -> FitResult:
    """Train objective.student; the epoch with the best validation accuracy is restored at the end."""
    device = settings.device
    torch.manual_seed(settings.seed)
    objective.to(device).to(memory_format=torch.channels_last)
    student = objective.student
    stream = ViewStream(data, prep, settings)
    steps_per_epoch = stream.steps_per_epoch
    total_steps = settings.epochs * steps_per_epoch
    step = TrainStep(objective, settings, total_steps)
    report_every = REPORT_EVERY if device == "cpu" else REPORT_EVERY_CUDA

    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, best_val = 0, -1.0
    started = time.perf_counter()
    status = ""
    with step.ready(), reporter.progress(label, total=total_steps) as advance:
        for epoch in range(1, settings.epochs + 1):
            objective.train()
            sums: dict[str, torch.Tensor] = {}  # on the device: read back only every few steps (no per-step sync)
            epoch_start, reported = time.perf_counter(), 0
            for index, (images, labels) in enumerate(stream.epoch()):
                loss, parts = step(images, labels, (epoch - 1) * steps_per_epoch + index)
                for name, value in {"loss": loss, **parts}.items():
                    sums[name] = sums[name] + value.detach().float() if name in sums else value.detach().float()
                if index % report_every == report_every - 1 or index == steps_per_epoch - 1:
                    means = {k: float(v) / (index + 1) for k, v in sums.items()}
                    if not np.isfinite(means["loss"]):
                        raise KdcError(f"{label}: the loss became {means['loss']} in epoch {epoch}; lower --lr and retry")
                    running = " ".join(f"{k} {v:.3f}" for k, v in means.items())
                    advance(index + 1 - reported, status=f"ep {epoch}/{settings.epochs}{status} | {running}")
                    reported = index + 1
            # Scored on the dataset's own classes: outputs beyond them are auxiliary classes (a teacher's).
            with eager(student):
                val_logits = predict_logits(student, data.val_x, prep, device, amp=True)[:, : len(data.classes)]
            val_acc = accuracy(val_logits, data.val_y)
            record = {"epoch": epoch, **means}
            record.update(val_accuracy=val_acc, lr=step.scheduler.get_last_lr()[0], seconds=time.perf_counter() - epoch_start)
            history.append(record)
            if val_acc > best_val:
                best_val, best_epoch = val_acc, epoch
                best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
            status = f" val {val_acc:.1%} (best {best_val:.1%} @{best_epoch})"
            advance(0, status=f"ep {epoch}/{settings.epochs}{status} | {running}")
    assert best_state is not None
    student.load_state_dict(best_state)
    student.eval()
    return FitResult(best_epoch, best_val, time.perf_counter() - started, history)


class TrainStep:
    """One optimizer step of an objective: forward in the run's precision, backward, AdamW, one-cycle schedule.

    `fit` and benchmarks/train_throughput.py both train through it. `ready()` is the context in which
    steps run: cuDNN autotuning on CUDA, and the networks compiled when settings.compile says so.
    """

    def __init__(self, objective: nn.Module, settings: TrainSettings, total_steps: int) -> None:
        self.objective = objective
        self.device = settings.device
        self.precision = resolve_precision(settings.device, settings.precision)
        self.optimizer = create_optimizer(trainable_parameters(objective), settings.lr, settings.weight_decay, settings.device)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=settings.lr, total_steps=total_steps, pct_start=warmup_fraction(total_steps)
        )
        self.scaler = grad_scaler(settings.device, self.precision)
        self.compile = should_compile(settings.compile, settings.device)

    def networks(self) -> list[nn.Module]:
        """The networks that run in a step: the student, and the teacher when it runs live."""
        teacher = getattr(self.objective, "teacher", None)
        live = [teacher.model] if isinstance(teacher, LiveTeacher) else []
        return [self.objective.student, *live]

    def ready(self) -> Any:
        """The context steps run in (cuDNN autotuning, compiled networks)."""
        stack = ExitStack()
        stack.enter_context(cudnn_autotune(self.device))
        stack.enter_context(compiled(self.networks(), self.compile))
        return stack

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, view: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast(self.device, self.precision):
            loss, parts = self.objective(images, labels, view)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss, parts


def clone_model(model: nn.Module) -> nn.Module:
    """An independent copy with identical weights (for baseline and distilled student)."""
    return copy.deepcopy(model)


def augment(batch: Any, generator: Any, flip: bool) -> Any:
    """Random crop (reflect padding of size/8) and optional horizontal flip, for a whole float batch at once."""
    n, _, h, w = batch.shape
    pad = max(1, h // 8)
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(batch.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(batch.device)
    rows = (dy[:, None] + torch.arange(h, device=batch.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=batch.device)[None, :])[:, None, None, :]
    index = torch.arange(n, device=batch.device)[:, None, None, None]
    channel = torch.arange(batch.shape[1], device=batch.device)[None, :, None, None]
    out = padded[index, channel, rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(batch.device)
        out = torch.where(mirror[:, None, None, None], out.flip(3), out)
    return out

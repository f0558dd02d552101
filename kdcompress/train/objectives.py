"""What is optimised: a training objective is a module that returns the loss and its named parts.

The baseline and the distilled student use the same loop (`loop.fit`) and differ only in
their objective. `objective.student` is the bare network that gets exported; the teacher and
the feature projection live beside it and are never part of the export.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from kdcompress.train import losses
from kdcompress.train.models import pooled_width


class Trainable(nn.Module):
    """What an objective trains, in one module that DDP can wrap: the student and, for features, the projection."""

    def __init__(self, student: nn.Module, projection: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.student = student
        self.projection = projection

    def forward(self, images: torch.Tensor, features: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The student's logits, and its pooled features projected to the teacher's when asked for."""
        feature_map = self.student.forward_features(images)
        logits = self.student.forward_head(feature_map)
        if not features or self.projection is None:
            return logits, None
        return logits, self.projection(self.student.forward_head(feature_map, pre_logits=True))


class Objective(nn.Module):
    """An objective's common part: the trainable networks, run directly or through DDP (`collectives.data_parallel`)."""

    def __init__(self, student: nn.Module, projection: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.trainable = Trainable(student, projection)
        self.distribute(None)

    @property
    def student(self) -> nn.Module:
        """The bare student network: what is evaluated, exported and saved."""
        return self.trainable.student

    @property
    def projection(self) -> Optional[nn.Module]:
        """The student -> teacher feature projection (beta > 0), never exported."""
        return self.trainable.projection

    def distribute(self, wrapper: Optional[nn.Module]) -> None:
        """Run the trainable networks through wrapper (a DDP of self.trainable), or directly again with None.

        Kept out of the registered submodules, so the objective's parameters and state stay those of its networks.
        """
        object.__setattr__(self, "runner", wrapper)

    def run(self, images: torch.Tensor, features: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Trainable.forward, through DDP while one wraps it."""
        return (self.runner if self.runner is not None else self.trainable)(images, features)


class Supervised(Objective):
    """Cross-entropy on the labels: how the teacher and the baseline student are trained.

    With smoothing > 0 it is the label-smoothing control: the same student, views and schedule as
    the baseline, with a softened target in place of a teacher (`kdc compress --control`).
    """

    def __init__(self, student: nn.Module, smoothing: float = 0.0, weights: Optional[torch.Tensor] = None) -> None:
        super().__init__(student)
        self.smoothing = smoothing
        self.register_buffer("weights", weights)  # per-class weights of the CE (a balanced teacher), or None

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, view: Optional[int] = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts for one batch (view, the batch's index in the run, is not needed here)."""
        logits, _ = self.run(images)
        ce = losses.cross_entropy(logits, labels, self.smoothing, self.weights)
        return ce, {"ce": ce}

    def describe(self) -> str:
        """The objective as a formula."""
        target = f"y smoothed by {self.smoothing:.3g}" if self.smoothing > 0 else "y"
        weighted = ", classes weighted by inverse frequency" if self.weights is not None else ""
        return f"loss = CE(student, {target}{weighted})"


class LiveTeacher(nn.Module):
    """The frozen teacher network, run on every batch (what `kdc compress` does)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.num_features = pooled_width(model)  # what forward returns as features: the projection's output width

    def train(self, mode: bool = True) -> "LiveTeacher":
        """The teacher always stays in eval mode (its BatchNorm statistics never move)."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, view: Optional[int], features: bool
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Teacher logits for the batch, and its pooled features when asked for."""
        feature_map = self.model.forward_features(images)
        logits = self.model.forward_head(feature_map)
        pooled = self.model.forward_head(feature_map, pre_logits=True) if features else None
        return logits, pooled


class RecordedTeacher(nn.Module):
    """The teacher's outputs for every batch of one training run, computed once and replayed.

    Valid only for students that see exactly the recorded views: same data, seed, epochs and
    batch size (`teacher.record_teacher` makes them with the same view stream as `loop.fit`).
    This is "consistent teaching" (Beyer et al. 2022) with the outputs precomputed as in FKD
    (Shen & Xing 2022): a sweep of N students costs N student trainings plus one teacher pass.
    """

    def __init__(self, logits: torch.Tensor, features: Optional[torch.Tensor], num_features: int) -> None:
        super().__init__()
        self.register_buffer("logits", logits)  # views x batch x classes
        self.register_buffer("features", features)  # views x batch x teacher features, or None
        self.num_features = num_features

    @property
    def views(self) -> int:
        """Number of recorded batches."""
        return int(self.logits.shape[0])

    def forward(
        self, images: torch.Tensor, view: Optional[int | torch.Tensor], features: bool
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The recorded outputs of batch number `view` (images are only checked for their count).

        view is an int, or a one-element tensor on the device: a CUDA graph replays with the batch number it
        holds (`loop.TrainStep`), so it is read on the device, and only the int is range-checked here.
        """
        on_device = isinstance(view, torch.Tensor)
        if (not on_device and (view is None or not 0 <= view < self.views)) or self.logits.shape[1] != images.shape[0]:
            raise ValueError(f"batch {view} of {images.shape[0]} images was not recorded ({self.views} batches)")
        if features and self.features is None:
            raise ValueError("the teacher's features were not recorded (record with features=True)")
        if on_device:
            index = view.reshape(1)
            return self.logits.index_select(0, index)[0], self.features.index_select(0, index)[0] if features else None
        return self.logits[view], self.features[view] if features else None


class Distillation(Objective):
    """CE on labels + a logit term to the frozen teacher (KL, DIST or DKD: losses.KdLoss) + L2 feature alignment."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        temperature: float,
        alpha: float,
        beta: float,
        projection: Optional[nn.Module] = None,
        kd: losses.KdLoss = losses.KdLoss(),
        views: int = 0,
        unlabeled: bool = False,
    ) -> None:
        """views: how many batches the training has (DKD's warm-up is a share of them; 0: no warm-up). unlabeled: some
        images have no label (--unlabeled, label -1), so the CE averages over the labeled ones."""
        if beta > 0 and projection is None:
            raise ValueError("beta > 0 needs a projection from student to teacher features")
        super().__init__(student, projection if beta > 0 else None)
        self.teacher = teacher if isinstance(teacher, (LiveTeacher, RecordedTeacher)) else LiveTeacher(teacher)
        self.temperature = temperature
        self.alpha = alpha
        self.beta = beta
        self.kd = kd
        self.views = views
        self.unlabeled = unlabeled

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, view: Optional[int] = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts (ce, kd and, with beta > 0, feat) for one batch."""
        features = self.projection is not None
        student_logits, student_features = self.run(images, features)
        teacher_logits, teacher_features = self.teacher(images, view, features)
        kd = self.kd(student_logits, teacher_logits, labels, self.temperature)
        parts = {
            "ce": losses.labeled_cross_entropy(student_logits, labels) if self.unlabeled else losses.cross_entropy(student_logits, labels),
            "kd": kd if view is None else kd * self.kd.ramp(view, self.views),
        }
        if features:
            parts["feat"] = losses.feature_l2(student_features, teacher_features)
        weights = {"ce": 1.0 - self.alpha, "kd": self.alpha, "feat": self.beta}
        return losses.weighted_sum(parts, weights), parts

    def describe(self) -> str:
        """The objective as a formula with the numbers in place."""
        return losses.describe(self.temperature, self.alpha, self.beta, self.kd)


def trainable_parameters(objective: nn.Module) -> list[Any]:
    """Parameters the optimiser updates: student and projection, never the teacher."""
    return [p for p in objective.parameters() if p.requires_grad]

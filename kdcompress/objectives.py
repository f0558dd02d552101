"""What is optimised: a training objective is a module that returns the loss and its named parts.

The baseline and the distilled student use the same loop (`train.fit`) and differ only in
their objective. `objective.student` is the bare network that gets exported; the teacher and
the feature projection live beside it and are never part of the export.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from kdcompress import losses


class Supervised(nn.Module):
    """Cross-entropy on hard labels: how the teacher and the baseline student are trained."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts for one batch."""
        ce = losses.cross_entropy(self.student(images), labels)
        return ce, {"ce": ce}

    def describe(self) -> str:
        """The objective as a formula."""
        return "loss = CE(student, y)"


class Distillation(nn.Module):
    """CE on labels + T^2-scaled KL to the frozen teacher's softened logits + L2 feature alignment."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        temperature: float,
        alpha: float,
        beta: float,
        projection: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if beta > 0 and projection is None:
            raise ValueError("beta > 0 needs a projection from student to teacher features")
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.projection = projection if beta > 0 else None
        self.temperature = temperature
        self.alpha = alpha
        self.beta = beta

    def train(self, mode: bool = True) -> "Distillation":
        """Train the student (and projection); the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and its parts (ce, kd and, with beta > 0, feat) for one batch."""
        student_map = self.student.forward_features(images)
        student_logits = self.student.forward_head(student_map)
        with torch.no_grad():
            teacher_map = self.teacher.forward_features(images)
            teacher_logits = self.teacher.forward_head(teacher_map)
        parts = {
            "ce": losses.cross_entropy(student_logits, labels),
            "kd": losses.kd_kl(student_logits, teacher_logits, self.temperature),
        }
        if self.projection is not None:
            with torch.no_grad():
                teacher_features = self.teacher.forward_head(teacher_map, pre_logits=True)
            student_features = self.student.forward_head(student_map, pre_logits=True)
            parts["feat"] = losses.feature_l2(self.projection(student_features), teacher_features)
        weights = {"ce": 1.0 - self.alpha, "kd": self.alpha, "feat": self.beta}
        return losses.weighted_sum(parts, weights), parts

    def describe(self) -> str:
        """The objective as a formula with the numbers in place."""
        return losses.describe(self.temperature, self.alpha, self.beta)


def trainable_parameters(objective: nn.Module) -> list[Any]:
    """Parameters the optimiser updates: student and projection, never the teacher."""
    return [p for p in objective.parameters() if p.requires_grad]

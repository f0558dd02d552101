"""Distillation loss terms as pure functions, and the weighted sum that combines them.

    loss = (1 - alpha) * CE(student, y)
         + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + beta * ||P(f_s) - f_t||^2

KL is summed over classes and averaged over the batch ("batchmean"). The feature term is the
squared L2 distance between the projected student features and the teacher features, divided
by their dimension (a mean squared error) and averaged over the batch.
"""

from __future__ import annotations

from typing import Any

FORMULA = (
    "loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))"
    " + beta * ||P(f_s) - f_t||^2"
)
FORMULA_NOTES = (
    "KL is averaged per sample (batchmean); f_s, f_t are the pooled penultimate features; "
    "P is a linear projection used in training only; the feature term is a mean squared error."
)


def cross_entropy(student_logits: Any, labels: Any, smoothing: float = 0.0, weights: Any = None) -> Any:
    """Mean cross-entropy on labels: class indices, or per-class probabilities (mixed labels).

    smoothing > 0 is label smoothing: the target is (1 - smoothing) * label + smoothing / classes.
    weights (one per class) make it a weighted mean: sum of weight[y] x loss over the sum of weight[y].
    """
    import torch.nn.functional as F

    return F.cross_entropy(student_logits.float(), labels, weight=weights, label_smoothing=smoothing)


def off_true_mass(teacher_logits: Any, labels: Any, temperature: float) -> float:
    """The teacher's average probability off the true class, softmax(teacher / T), over the given images."""
    import torch

    probabilities = torch.softmax(torch.as_tensor(teacher_logits).float() / temperature, dim=1)
    on_true = probabilities.gather(1, torch.as_tensor(labels).long().view(-1, 1))
    return float(1.0 - on_true.mean())


def matching_smoothing(mass: float, classes: int) -> float:
    """The label smoothing whose target puts `mass` off the true class (smoothing * (classes - 1) / classes = mass)."""
    return min(1.0, max(0.0, mass * classes / (classes - 1)))


def kd_kl(student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch."""
    import torch.nn.functional as F

    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def feature_l2(projected_student: Any, teacher_features: Any) -> Any:
    """||P(f_s) - f_t||^2 / dim, averaged over the batch."""
    diff = projected_student.float() - teacher_features.float()
    return diff.pow(2).mean()


def weighted_sum(parts: dict[str, Any], weights: dict[str, float]) -> Any:
    """Sum of weight * part over the named parts with a non-zero weight."""
    total = None
    for name, weight in weights.items():
        if weight == 0.0:
            continue
        term = weight * parts[name]
        total = term if total is None else total + term
    if total is None:
        raise ValueError("every loss weight is zero")
    return total


def describe(temperature: float, alpha: float, beta: float) -> str:
    """The resolved formula, with the numbers in place."""
    terms = []
    if alpha < 1:
        terms.append(f"{1 - alpha:g} * CE(student, y)")
    if alpha > 0:
        terms.append(f"{alpha:g} * {temperature:g}^2 * KL(softmax(teacher/{temperature:g}) || softmax(student/{temperature:g}))")
    if beta > 0:
        terms.append(f"{beta:g} * ||P(f_s) - f_t||^2")
    return "loss = " + " + ".join(terms)

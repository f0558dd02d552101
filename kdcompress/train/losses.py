"""Distillation loss terms as pure functions, and the weighted sum that combines them.

    loss = (1 - alpha) * CE(student, y)
         + alpha * KD(student, teacher; T)
         + beta * ||P(f_s) - f_t||^2

KD is one of (`--kd-loss`):
- kl (Hinton et al. 2015): T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over
  classes and averaged over the batch ("batchmean");
- dist (Huang et al., NeurIPS 2022): T^2 * (inter * (1 - mean Pearson correlation between the
  softened outputs of each image) + intra * (1 - mean Pearson correlation between the softened
  outputs of each class over the batch)); it asks for the teacher's ranking of classes and of
  images, not its exact probabilities;
- dkd (Zhao et al., CVPR 2022): T^2 * (target * KL over (p_true, 1 - p_true) + non-target * KL over
  the classes other than the true one, renormalised), the two parts of the KL weighted apart and
  ramped up linearly over the first share of the training (warm-up). With two classes the
  non-target distribution has one class and its KL is 0: DKD is then its target term, which on two
  classes is the full KL, so dkd = target x kl there.

The feature term is the squared L2 distance between the projected student features and the
teacher features, divided by their dimension (a mean squared error) and averaged over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KD_LOSSES = ("kl", "dist", "dkd")  # --kd-loss: the logit term that alpha weights

FORMULA = "loss = (1 - alpha) * CE(student, y) + alpha * KD(student, teacher; T) + beta * ||P(f_s) - f_t||^2"
FORMULA_NOTES = (
    "KD is --kd-loss: kl = T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged per sample (batchmean); "
    "dist = T^2 * (inter * (1 - Pearson(images)) + intra * (1 - Pearson(classes))) of the softened outputs "
    "(Huang et al. 2022); dkd = T^2 * (target * TCKD + non-target * NCKD), the KL split at the true class "
    "(Zhao et al. 2022), ramped up over a warm-up. f_s, f_t are the pooled penultimate features; "
    "P is a linear projection used in training only; the feature term is a mean squared error."
)


@dataclass(frozen=True)
class KdLoss:
    """Which logit term alpha weights, and its knobs (the papers' defaults)."""

    kind: str = "kl"  # kl | dist | dkd
    dist_inter: float = 1.0  # DIST: weight of the per-image (inter-class) relation (paper: 1)
    dist_intra: float = 1.0  # DIST: weight of the per-class (intra-class) relation (paper: 1)
    dkd_target: float = 1.0  # DKD: weight of the target-class term TCKD (paper: alpha 1)
    dkd_nontarget: float = 8.0  # DKD: weight of the non-target term NCKD (paper: beta 8 on CIFAR-100)
    dkd_warmup: float = 20 / 240  # DKD: share of the training over which the term ramps up from 0 (paper: 20 of 240 epochs)

    def __call__(self, student_logits: Any, teacher_logits: Any, labels: Any, temperature: float) -> Any:
        """The term for one batch (labels: class indices, or mixed label vectors whose largest entry counts for DKD)."""
        if self.kind == "kl":
            return kd_kl(student_logits, teacher_logits, temperature)
        if self.kind == "dist":
            return kd_dist(student_logits, teacher_logits, temperature, self.dist_inter, self.dist_intra)
        if self.kind == "dkd":
            targets = labels if labels.dim() == 1 else labels.argmax(dim=1)
            return kd_dkd(student_logits, teacher_logits, targets, temperature, self.dkd_target, self.dkd_nontarget)
        raise ValueError(f"unknown KD loss {self.kind!r}")

    def ramp(self, view: Any, views: int) -> Any:
        """The term's weight factor at batch number view of views: DKD's linear warm-up, 1 for the others."""
        if self.kind != "dkd" or self.dkd_warmup <= 0 or views <= 0:
            return 1.0
        warm = max(1.0, self.dkd_warmup * views)
        if isinstance(view, int):
            return min(1.0, (view + 1) / warm)
        return ((view.reshape(()).float() + 1) / warm).clamp(max=1.0)  # a CUDA graph replays with the view on the device

    def text(self, temperature: float) -> str:
        """The term with its numbers in place."""
        t = f"{temperature:g}"
        if self.kind == "dist":
            return f"{t}^2 * DIST(inter {self.dist_inter:g}, intra {self.dist_intra:g}; T={t})"
        if self.kind == "dkd":
            warm = f", warm-up {self.dkd_warmup:.0%} of the steps" if self.dkd_warmup > 0 else ""
            return f"{t}^2 * DKD(target {self.dkd_target:g}, non-target {self.dkd_nontarget:g}; T={t}{warm})"
        return f"{t}^2 * KL(softmax(teacher/{t}) || softmax(student/{t}))"


def cross_entropy(student_logits: Any, labels: Any, smoothing: float = 0.0, weights: Any = None) -> Any:
    """Mean cross-entropy on labels: class indices, or per-class probabilities (mixed labels).

    smoothing > 0 is label smoothing: the target is (1 - smoothing) * label + smoothing / classes.
    weights (one per class) make it a weighted mean: sum of weight[y] x loss over the sum of weight[y].
    """
    import torch.nn.functional as F

    return F.cross_entropy(student_logits.float(), labels, weight=weights, label_smoothing=smoothing)


def labeled_cross_entropy(student_logits: Any, labels: Any) -> Any:
    """The cross-entropy over the images that have a label, where some have none (--unlabeled): class indices with
    UNLABELED (-1) left out, or mixed label vectors weighted by their label mass (an image without a label carries
    none). The mean over the labeled images: the same scale as the baseline's CE; 0 for a batch without any."""
    import torch.nn.functional as F

    logits = student_logits.float()
    if labels.dim() == 1:
        known = labels >= 0
        picked = F.cross_entropy(logits, labels.clamp(min=0), reduction="none") * known
        return picked.sum() / known.sum().clamp(min=1)
    mass = labels.sum(dim=1)
    return -(labels * F.log_softmax(logits, dim=1)).sum() / mass.sum().clamp(min=1e-12)


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


def _pearson_gap(a: Any, b: Any, eps: float = 1e-8) -> Any:
    """1 - the mean over rows of the Pearson correlation between the rows of a and b."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    correlation = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1.0 - correlation.mean()


def kd_dist(student_logits: Any, teacher_logits: Any, temperature: float, inter: float = 1.0, intra: float = 1.0) -> Any:
    """DIST: T^2 * (inter * (1 - Pearson per image) + intra * (1 - Pearson per class)) of softmax(logits / T)."""
    import torch

    student = torch.softmax(student_logits.float() / temperature, dim=1)
    teacher = torch.softmax(teacher_logits.float() / temperature, dim=1)
    between_classes = _pearson_gap(student, teacher)  # each image's class ranking
    between_images = _pearson_gap(student.t(), teacher.t())  # each class's image ranking over the batch
    return temperature**2 * (inter * between_classes + intra * between_images)


def kd_dkd(
    student_logits: Any, teacher_logits: Any, labels: Any, temperature: float, target: float = 1.0, nontarget: float = 8.0
) -> Any:
    """DKD: T^2 * (target * KL of (p_true, 1 - p_true) + nontarget * KL of the other classes, renormalised), batchmean."""
    import torch
    import torch.nn.functional as F

    student = student_logits.float() / temperature
    teacher = teacher_logits.float() / temperature
    true = F.one_hot(labels.long(), student.shape[1]).bool()
    masked = torch.finfo(torch.float32).min

    def binary(z: Any) -> Any:  # log (p_true, 1 - p_true), in log space (exact where 1 - p_true is tiny)
        whole = z.logsumexp(dim=1)
        return torch.stack([(z * true).sum(1) - whole, z.masked_fill(true, masked).logsumexp(dim=1) - whole], dim=1)

    log_binary_student, log_binary_teacher = binary(student), binary(teacher)
    tckd = (log_binary_teacher.exp() * (log_binary_teacher - log_binary_student)).sum(1).mean()
    # NCKD: the distribution over the classes other than the true one (the true class masked out of the softmax)
    log_student_rest = F.log_softmax(student.masked_fill(true, masked), dim=1)
    log_teacher_rest = F.log_softmax(teacher.masked_fill(true, masked), dim=1)
    nckd = (log_teacher_rest.exp() * (log_teacher_rest - log_student_rest)).masked_fill(true, 0.0).sum(1).mean()
    return temperature**2 * (target * tckd + nontarget * nckd)


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


def describe(temperature: float, alpha: float, beta: float, kd: KdLoss = KdLoss()) -> str:
    """The resolved formula, with the numbers in place."""
    terms = []
    if alpha < 1:
        terms.append(f"{1 - alpha:g} * CE(student, y)")
    if alpha > 0:
        terms.append(f"{alpha:g} * {kd.text(temperature)}")
    if beta > 0:
        terms.append(f"{beta:g} * ||P(f_s) - f_t||^2")
    return "loss = " + " + ".join(terms)

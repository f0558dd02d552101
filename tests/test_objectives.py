"""Distillation objective: the loss is the stated sum, and gradients reach only student and projection."""

import math

import pytest
import timm
import torch

from kdcompress.train import losses
from kdcompress.train.models import create_projection
from kdcompress.train.objectives import Distillation, Supervised, trainable_parameters


def _pair(seed=0):
    torch.manual_seed(seed)
    student = timm.create_model("test_resnet", num_classes=3, in_chans=3)
    teacher = timm.create_model("test_efficientnet", num_classes=3, in_chans=3)
    return student, teacher


def test_loss_is_weighted_sum_of_its_parts():
    student, teacher = _pair()
    objective = Distillation(student, teacher, 3.0, 0.7, 0.5, create_projection(student, teacher)).train()
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    loss, parts = objective(images, labels)
    assert set(parts) == {"ce", "kd", "feat"}
    expected = 0.3 * parts["ce"] + 0.7 * parts["kd"] + 0.5 * parts["feat"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # The kd part is the KL between exactly these two networks' logits.
    objective.eval()
    with torch.no_grad():
        _, parts_eval = objective(images, labels)
        direct = losses.kd_kl(student(images), teacher(images), 3.0)
    assert parts_eval["kd"].item() == pytest.approx(direct.item(), rel=1e-5)


def test_gradients_reach_student_and_projection_never_teacher():
    student, teacher = _pair()
    projection = create_projection(student, teacher)
    objective = Distillation(student, teacher, 4.0, 0.5, 0.3, projection).train()
    loss, _ = objective(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    trainable = {id(p) for p in trainable_parameters(objective)}
    assert trainable == {id(p) for p in list(student.parameters()) + list(projection.parameters())}


def test_teacher_stays_in_eval_mode_and_its_batchnorm_statistics_do_not_move():
    student, teacher = _pair()
    objective = Distillation(student, teacher, 4.0, 0.5, 0.0)
    objective.train()
    assert student.training and not teacher.training
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0]))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_beta_zero_is_logits_only_and_needs_no_projection():
    student, teacher = _pair()
    objective = Distillation(student, teacher, 4.0, 0.5, 0.0)
    _, parts = objective(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    assert set(parts) == {"ce", "kd"} and objective.projection is None
    with pytest.raises(ValueError):
        Distillation(student, teacher, 4.0, 0.5, 0.3, projection=None)


def test_supervised_is_plain_cross_entropy():
    student, _ = _pair()
    images, labels = torch.randn(3, 3, 16, 16), torch.tensor([2, 0, 1])
    student.eval()
    loss, parts = Supervised(student).eval()(images, labels)
    assert loss.item() == pytest.approx(losses.cross_entropy(student(images), labels).item(), rel=1e-6)
    assert set(parts) == {"ce"}


def test_zeroed_head_starts_at_uniform_predictions_and_still_learns():
    from kdcompress.train.models import zero_init_head

    torch.manual_seed(0)
    teacher = zero_init_head(timm.create_model("test_efficientnet", num_classes=3)).eval()
    logits = teacher(torch.randn(4, 3, 16, 16))
    assert torch.equal(logits, torch.zeros_like(logits))
    loss = losses.cross_entropy(logits, torch.tensor([0, 1, 2, 0]))
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)
    loss.backward()
    assert teacher.get_classifier().weight.grad.abs().sum() > 0  # still learns


def test_the_projection_takes_the_width_forward_head_returns_when_a_head_conv_widens_it():
    # MobileNetV4's pooled features pass a 960 -> 1280 head conv: the projection and the recorded width must use 1280.
    from kdcompress.train.models import create_model, create_projection, pooled_width
    from kdcompress.train.objectives import LiveTeacher

    student, teacher = create_model("mobilenetv4_conv_small", 3, 3), create_model("test_efficientnet", 3, 3)
    x = torch.zeros(2, 3, 32, 32)
    pooled = student.forward_head(student.forward_features(x), pre_logits=True)
    assert pooled.shape[1] == pooled_width(student) == 1280 != student.num_features
    _, features = LiveTeacher(teacher)(x, None, True)
    assert create_projection(student, teacher)(pooled).shape == features.shape == (2, LiveTeacher(teacher).num_features)


@pytest.mark.parametrize("kind", ["kl", "dist", "dkd"])
def test_every_kd_loss_sends_gradients_to_the_student_only(kind):
    from kdcompress.train.losses import KdLoss

    torch.manual_seed(0)
    student, teacher = timm.create_model("test_resnet", num_classes=3), timm.create_model("test_efficientnet", num_classes=3)
    objective = Distillation(student, teacher, 4.0, 0.5, 0.0, kd=KdLoss(kind), views=10)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    loss, parts = objective(images, labels, view=3)
    loss.backward()
    assert parts["kd"].item() > 0
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("kind", ["kl", "dist", "dkd"])
def test_with_no_distillation_weight_every_kd_loss_is_the_baseline_bit_for_bit(kind):
    from kdcompress.train.losses import KdLoss

    torch.manual_seed(0)
    student, teacher = timm.create_model("test_resnet", num_classes=3), timm.create_model("test_efficientnet", num_classes=3)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    distilled, _ = Distillation(student, teacher, 4.0, 0.0, 0.0, kd=KdLoss(kind), views=10)(images, labels, view=0)
    baseline, _ = Supervised(student)(images, labels)
    assert torch.equal(distilled, baseline)

"""Loss terms against values computed by hand."""

import math

import pytest
import torch

from kdcompress.train import losses


def _softmax(values, t=1.0):
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


def test_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    expected = (-math.log(_softmax([2, 1, 0])[0]) - math.log(_softmax([0.5, 0.5, 3.0])[1])) / 2
    assert losses.cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_cross_entropy_is_the_weighted_mean_with_inverse_frequency_weights():
    from kdcompress.train.teacher import balancing_weights

    labels = [0, 0, 0, 1]  # 3:1, as chest-xray's train split: class 1 weighs 3 times class 0
    weights = balancing_weights(labels, 3)
    assert weights.tolist() == pytest.approx([4 / 6, 4 / 2, 0.0])  # n / (classes x count); a class without images: 0
    logits = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.5, 1.5, 0.0]])
    nll = [-math.log(_softmax(row)[y]) for row, y in zip(logits.tolist(), labels)]
    w = [4 / 6] * 3 + [2.0]
    expected = sum(wi * li for wi, li in zip(w, nll)) / sum(w)
    assert losses.cross_entropy(logits, torch.tensor(labels), weights=weights).item() == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(sum(nll) / 4, rel=1e-3)  # the weights change the value


def test_kd_kl_is_t_squared_batchmean_kl_teacher_to_student():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]]
    teacher = [[3.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    t = 4.0
    per_sample = []
    for s_row, t_row in zip(student, teacher):
        p_t, p_s = _softmax(t_row, t), _softmax(s_row, t)
        per_sample.append(sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s)))
    expected = t**2 * sum(per_sample) / len(per_sample)  # batchmean: summed over classes, averaged over samples
    got = losses.kd_kl(torch.tensor(student), torch.tensor(teacher), t).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got > 0


def test_kd_kl_is_zero_for_identical_logits_and_grows_with_disagreement():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert losses.kd_kl(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    near = losses.kd_kl(logits, logits + torch.tensor([[0.0, 0.0, 1.0]]), 2.0).item()
    far = losses.kd_kl(logits, logits + torch.tensor([[0.0, 0.0, 3.0]]), 2.0).item()
    assert 0 < near < far


def test_feature_l2_is_mean_squared_distance():
    projected = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 0.0], [3.0, 2.0]])
    # squared distances per sample: 1 + 4 = 5 and 0 + 4 = 4; divided by dim 2, averaged over 2 samples
    assert losses.feature_l2(projected, target).item() == pytest.approx((5 / 2 + 4 / 2) / 2)


def test_weighted_sum_skips_zero_weights_and_rejects_all_zero():
    parts = {"ce": torch.tensor(2.0), "kd": torch.tensor(3.0), "feat": torch.tensor(float("nan"))}
    assert losses.weighted_sum(parts, {"ce": 0.25, "kd": 0.75, "feat": 0.0}).item() == pytest.approx(2.75)
    with pytest.raises(ValueError):
        losses.weighted_sum(parts, {"ce": 0.0})


def test_describe_states_the_resolved_formula():
    text = losses.describe(4.0, 0.5, 0.3)
    assert text == (
        "loss = 0.5 * CE(student, y) + 0.5 * 4^2 * KL(softmax(teacher/4) || softmax(student/4))"
        " + 0.3 * ||P(f_s) - f_t||^2"
    )
    assert losses.describe(2.0, 1.0, 0.0) == "loss = 1 * 2^2 * KL(softmax(teacher/2) || softmax(student/2))"

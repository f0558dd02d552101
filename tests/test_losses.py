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


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    da, db = [x - ma for x in a], [x - mb for x in b]
    return sum(x * y for x, y in zip(da, db)) / math.sqrt(sum(x * x for x in da) * sum(y * y for y in db))


def test_dist_is_t_squared_one_minus_pearson_per_image_and_per_class():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0], [0.3, 0.1, -0.4]]
    teacher = [[3.0, 0.0, 1.0], [1.0, 0.5, 2.5], [0.0, 2.0, 1.0]]
    t = 2.0
    ps = [_softmax(row, t) for row in student]
    pt = [_softmax(row, t) for row in teacher]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(ps, pt)) / 3  # each image: its classes
    columns = lambda rows: [list(c) for c in zip(*rows)]  # noqa: E731
    intra = 1 - sum(_pearson(a, b) for a, b in zip(columns(ps), columns(pt))) / 3  # each class: its images
    got = losses.kd_dist(torch.tensor(student), torch.tensor(teacher), t, inter=1.0, intra=2.0).item()
    assert got == pytest.approx(t**2 * (inter + 2.0 * intra), rel=1e-5)
    assert losses.kd_dist(torch.tensor(student), torch.tensor(student) * 3 + 1, 1.0).item() > 0  # rankings kept, values not
    same = torch.tensor(teacher)
    assert losses.kd_dist(same, same, t).item() == pytest.approx(0.0, abs=1e-5)  # float32 rounding, times T^2


def test_dkd_splits_the_kl_at_the_true_class_and_weighs_the_parts_apart():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]]
    teacher = [[3.0, 0.0, 1.0], [1.0, 0.5, 2.5]]
    labels = [0, 2]
    t = 4.0
    tckd, nckd = [], []
    for s_row, t_row, y in zip(student, teacher, labels):
        ps, pt = _softmax(s_row, t), _softmax(t_row, t)
        bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
        tckd.append(sum(q * math.log(q / p) for q, p in zip(bt, bs)))
        rest_s = _softmax([v for i, v in enumerate(s_row) if i != y], t)
        rest_t = _softmax([v for i, v in enumerate(t_row) if i != y], t)
        nckd.append(sum(q * math.log(q / p) for q, p in zip(rest_t, rest_s)))
    expected = t**2 * (1.0 * sum(tckd) / 2 + 8.0 * sum(nckd) / 2)
    got = losses.kd_dkd(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), t, 1.0, 8.0).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # the plain KL is the same two parts, the non-target one weighted by the teacher's mass off the true class
    kl = losses.kd_kl(torch.tensor(student), torch.tensor(teacher), t).item()
    off = [1 - _softmax(row, t)[y] for row, y in zip(teacher, labels)]
    assert kl == pytest.approx(t**2 * sum(a + o * b for a, o, b in zip(tckd, off, nckd)) / 2, rel=1e-5)


def test_dkd_on_two_classes_is_its_target_term_which_is_the_whole_kl():
    student = torch.tensor([[1.0, -0.5], [0.2, 0.9], [2.0, 1.0]])
    teacher = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.5, 0.4]])
    labels = torch.tensor([0, 1, 1])
    kl = losses.kd_kl(student, teacher, 4.0).item()
    assert losses.kd_dkd(student, teacher, labels, 4.0, 1.0, 8.0).item() == pytest.approx(kl, rel=1e-5)
    assert losses.kd_dkd(student, teacher, labels, 4.0, 1.0, 0.0).item() == pytest.approx(kl, rel=1e-5)  # no NCKD to weigh
    assert losses.kd_dkd(student, teacher, labels, 4.0, 2.5, 8.0).item() == pytest.approx(2.5 * kl, rel=1e-5)


def test_dkd_ramps_up_over_its_warm_up_and_the_others_never_do():
    dkd = losses.KdLoss("dkd", dkd_warmup=0.25)
    assert [dkd.ramp(v, 100) for v in (0, 11, 24, 25, 99)] == pytest.approx([1 / 25, 12 / 25, 1.0, 1.0, 1.0])
    assert float(dkd.ramp(torch.tensor([11]), 100)) == pytest.approx(12 / 25)  # the view held on the device (CUDA graphs)
    assert losses.KdLoss("dist").ramp(0, 100) == 1.0 and losses.KdLoss("kl").ramp(0, 100) == 1.0
    assert losses.KdLoss("dkd", dkd_warmup=0.0).ramp(0, 100) == 1.0


def test_each_kd_loss_describes_itself_with_its_knobs():
    assert losses.describe(4.0, 0.5, 0.0, losses.KdLoss("dist")) == "loss = 0.5 * CE(student, y) + 0.5 * 4^2 * DIST(inter 1, intra 1; T=4)"
    assert losses.describe(4.0, 0.5, 0.0, losses.KdLoss("dkd")) == (
        "loss = 0.5 * CE(student, y) + 0.5 * 4^2 * DKD(target 1, non-target 8; T=4, warm-up 8% of the steps)"
    )


def test_the_cross_entropy_of_a_batch_with_images_without_labels_averages_over_the_labeled_ones():
    # --unlabeled: label -1 means no label; the CE is the mean over the labeled images, by hand.
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 3.0], [9.0, -9.0, 0.0]])
    expected = (-math.log(_softmax([2, 1, 0])[0]) - math.log(_softmax([0.5, 0.5, 3.0])[2])) / 2
    labeled = losses.labeled_cross_entropy(logits, torch.tensor([0, 2, -1]))
    assert labeled.item() == pytest.approx(expected, rel=1e-6)
    assert losses.labeled_cross_entropy(logits, torch.tensor([-1, -1, -1])).item() == 0.0  # a batch without labels
    full = torch.tensor([0, 2, 1])  # every image labeled: exactly the plain CE
    assert losses.labeled_cross_entropy(logits, full).item() == pytest.approx(losses.cross_entropy(logits, full).item(), rel=1e-6)
    # mixed label vectors (mixup): an image without a label is a row of zeros, and weighs nothing
    from kdcompress.train.views import mix

    images = torch.zeros(3, 1, 2, 2)
    _, mixed = mix(images, torch.tensor([0, 2, -1]), 0.75, 3)  # each image mixed with its mirror: 0<->-1, 2<->2
    assert mixed.tolist() == [[0.75, 0.0, 0.0], [0.0, 0.0, 1.0], [0.25, 0.0, 0.0]]
    nll = [-math.log(_softmax(row)[c]) for row, c in zip(logits.tolist(), (0, 2, 0))]
    by_hand = (0.75 * nll[0] + 1.0 * nll[1] + 0.25 * nll[2]) / (0.75 + 1.0 + 0.25)
    assert losses.labeled_cross_entropy(logits, mixed).item() == pytest.approx(by_hand, rel=1e-6)

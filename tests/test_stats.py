"""The noise test of kdc sweep: hand-made correctness matrices with known answers."""

import numpy as np
import pytest

from kdcompress.core.stats import auc_summary, bootstrap_interval, compare, roc_auc


def _matrix(rows):
    return np.array(rows, dtype=bool)


def test_change_per_seed_and_its_mean_are_exact():
    baseline = _matrix([[1, 1, 0, 0], [1, 0, 0, 0]])  # 50%, 25%
    student = _matrix([[1, 1, 1, 0], [1, 1, 1, 0]])  # 75%, 75%
    result = compare(student, baseline)
    assert result.per_seed == [25.0, 50.0]
    assert result.delta == pytest.approx(37.5)
    assert result.delta_std == pytest.approx(np.std([25.0, 50.0], ddof=1))
    assert result.mean == pytest.approx(0.75) and result.std == 0.0
    assert (result.better_seeds, result.worse_seeds) == (2, 0)


def test_identical_students_are_noise_with_a_zero_interval():
    rng = np.random.default_rng(1)
    baseline = rng.random((3, 300)) < 0.8
    result = compare(baseline.copy(), baseline)
    assert (result.ci_low, result.ci_high, result.delta) == (0.0, 0.0, 0.0)
    assert result.verdict == "noise" and result.words.startswith("within noise")


def test_a_large_consistent_gain_is_more_than_noise_and_a_loss_is_worse():
    rng = np.random.default_rng(2)
    baseline = rng.random((3, 300)) < 0.7
    student = baseline | (rng.random((3, 300)) < 0.3)  # fixes ~30% of the mistakes, never breaks a right one
    better = compare(student, baseline)
    assert better.verdict == "better" and better.ci_low > 0 and "more than noise" in better.words
    worse = compare(baseline, student)
    assert worse.verdict == "worse" and worse.ci_high < 0


def test_a_gain_that_one_seed_contradicts_is_noise_even_with_a_positive_interval():
    baseline = np.zeros((3, 400), dtype=bool)
    student = baseline.copy()
    student[0, :200] = True  # +50 pts
    student[1, :200] = True  # +50 pts
    baseline[2, :4] = True  # seed 2: -1 pt
    result = compare(student, baseline)
    assert result.ci_low > 0 and result.worse_seeds == 1
    assert result.verdict == "noise" and "better in 2 of 3" in result.words


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    per_image = np.array([1.0] * 30 + [0.0] * 70)  # mean 30 pts
    low, high = bootstrap_interval(per_image)
    assert low < 30 < high and high - low < 25
    assert bootstrap_interval(per_image) == (low, high)


def test_shapes_must_match():
    with pytest.raises(ValueError):
        compare(np.zeros((2, 5), bool), np.zeros((3, 5), bool))


def test_roc_auc_counts_the_positive_negative_pairs_ranked_right():
    # Class 1's probability rises with logit[1] - logit[0]: negatives at -1 and 0.5, positives at 0.2 and 2.
    # Of the 4 (positive, negative) pairs, 3 rank the positive higher (0.2 < 0.5 is the miss): AUC 3/4.
    logits = np.array([[0.0, -1.0], [0.0, 0.5], [0.0, 0.2], [0.0, 2.0]])
    assert roc_auc(logits, np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(logits, np.array([1, 1, 0, 0])) == pytest.approx(0.25)
    assert roc_auc(np.zeros((4, 3)), np.array([0, 1, 2, 0])) is None  # three classes
    assert roc_auc(logits, np.array([1, 1, 1, 1])) is None  # one class present: undefined
    assert auc_summary([0.8, 0.9]) == pytest.approx({"roc_auc_mean": 0.85, "roc_auc_std": 0.0707107})
    assert auc_summary([0.8]) == {"roc_auc_mean": 0.8, "roc_auc_std": 0.0} and auc_summary([0.8, None]) == {}


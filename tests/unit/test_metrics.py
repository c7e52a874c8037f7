"""Identification, verification and calibration metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.metrics import (
    calibration_error,
    confusion_counts,
    equal_error_rate,
    error_curve,
    expected_calibration_error,
    false_rates,
    identification_metrics,
    per_class_report,
    reliability_bins,
    reliability_table,
    threshold_for_far,
    top_k_accuracy,
)
from tasks.evaluation.scores import random_forgery_scores

PROBABILITIES = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
LABELS = np.array([0, 1, 1, 2])


def test_identification_by_hand() -> None:
    metrics = identification_metrics(PROBABILITIES, LABELS, top_k=2)
    assert metrics["accuracy"] == pytest.approx(0.5)
    # Class 0: P=1/2 R=1 F1=2/3; class 1: no prediction, F1=0; class 2: P=1/2 R=1 F1=2/3.
    assert metrics["f1_macro"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    assert metrics["f1_weighted"] == pytest.approx((2 / 3 * 1 + 0 * 2 + 2 / 3 * 1) / 4)
    assert metrics["top2_accuracy"] == pytest.approx(1.0)
    assert top_k_accuracy(PROBABILITIES, LABELS, 1) == pytest.approx(0.5)
    assert top_k_accuracy(PROBABILITIES, LABELS, 10) == pytest.approx(1.0)


def test_per_class_report_and_confusion() -> None:
    report = per_class_report(PROBABILITIES, LABELS, ("a", "b", "c"))
    assert [row["writer"] for row in report] == ["a", "b", "c"]
    assert report[1] == {"writer": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    matrix = confusion_counts(LABELS, np.argmax(PROBABILITIES, axis=1), 3)
    assert matrix.tolist() == [[1, 0, 0], [1, 0, 1], [0, 0, 1]]


def test_equal_error_rate_by_hand() -> None:
    genuine = np.array([0.9, 0.8, 0.7, 0.3])
    impostor = np.array([0.6, 0.4, 0.2, 0.1])
    rates = equal_error_rate(genuine, impostor)
    assert rates.eer == pytest.approx(0.25)
    assert false_rates(genuine, impostor, rates.threshold) == pytest.approx((0.25, 0.25))
    assert rates.auc == pytest.approx(14 / 16)


def test_equal_error_rate_extremes() -> None:
    separable = equal_error_rate(np.array([0.8, 0.9]), np.array([0.1, 0.2]))
    assert separable.eer == 0.0 and separable.auc == 1.0
    rng = np.random.default_rng(0)
    same = equal_error_rate(rng.uniform(size=4000), rng.uniform(size=4000))
    assert same.eer == pytest.approx(0.5, abs=0.03)
    assert np.isnan(equal_error_rate(np.array([0.5]), np.zeros(0)).eer)


def test_threshold_for_target_far() -> None:
    impostor = np.arange(100) / 100.0
    threshold = threshold_for_far(impostor, 0.05)
    _, far = false_rates(np.array([1.0]), impostor, threshold)
    assert far == pytest.approx(0.05)
    _, far_below = false_rates(np.array([1.0]), impostor, np.nextafter(threshold, -np.inf) - 0.01)
    assert far_below > 0.05
    assert false_rates(np.array([1.0]), impostor, threshold_for_far(impostor, 0.0))[1] == 0.0


def test_expected_calibration_error() -> None:
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.5, 1.0, 20000)
    correct = rng.uniform(size=20000) < confidence
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    labels = np.where(correct, 0, 1)
    assert expected_calibration_error(probabilities, labels) < 0.02
    overconfident = np.stack([np.full(1000, 0.99), np.full(1000, 0.01)], axis=1)
    half_right = np.arange(1000) % 2
    assert expected_calibration_error(overconfident, half_right) == pytest.approx(0.49)


def test_random_forgeries_are_every_other_writer() -> None:
    scores = random_forgery_scores(PROBABILITIES, LABELS)
    assert len(scores) == 4 * 2
    assert sorted(scores.tolist()) == sorted([0.2, 0.1, 0.1, 0.6, 0.5, 0.1, 0.2, 0.2])


# Reliability bins and ECE, four bins: edges 0, 0.25, 0.5, 0.75, 1; a confidence on an edge falls in
# the lower bin ((0.25, 0.5] is bin 1), 1.0 in the last one. Confidence is the top-1 probability; a tie
# (0.5, 0.5) predicts the first class.
CALIBRATION_PROBABILITIES = np.array(
    [
        [0.6, 0.4],  # confidence 0.6, predicted 0, label 0: right, bin 2
        [0.3, 0.7],  # confidence 0.7, predicted 1, label 0: wrong, bin 2
        [0.75, 0.25],  # confidence 0.75 (on the edge), predicted 0, label 1: wrong, bin 2
        [0.5, 0.5],  # confidence 0.5 (on the edge), predicted 0, label 1: wrong, bin 1
        [0.9, 0.1],  # confidence 0.9, right, bin 3
        [0.2, 0.8],  # confidence 0.8, right, bin 3
        [1.0, 0.0],  # confidence 1.0, right, bin 3
    ]
)
CALIBRATION_LABELS = np.array([0, 0, 1, 1, 0, 1, 0])


def test_reliability_bins_by_hand() -> None:
    table = reliability_bins(CALIBRATION_PROBABILITIES, CALIBRATION_LABELS, bins=4)
    assert table["centre"] == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert table["count"] == [0.0, 1.0, 3.0, 3.0]
    # Bin 2: mean confidence (0.6 + 0.7 + 0.75) / 3 = 0.68333, one right of three; bin 3: (0.9 + 0.8 + 1) / 3.
    assert table["confidence"] == pytest.approx([np.nan, 0.5, 2.05 / 3, 0.9], nan_ok=True)
    assert table["accuracy"] == pytest.approx([np.nan, 0.0, 1 / 3, 1.0], nan_ok=True)


def test_expected_calibration_error_by_hand() -> None:
    # Sum over bins of (share of rows) * |accuracy - confidence|:
    # 1/7 * |0 - 0.5| + 3/7 * |1/3 - 2.05/3| + 3/7 * |1 - 0.9| = (0.5 + 1.05 + 0.3) / 7 = 1.85 / 7.
    ece = expected_calibration_error(CALIBRATION_PROBABILITIES, CALIBRATION_LABELS, bins=4)
    assert ece == pytest.approx(1.85 / 7)
    # Every row right at confidence 1.0: no error; every row wrong at 0.5 (a tie): 0.5.
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), bins=4) == 0.0
    assert expected_calibration_error(np.array([[0.5, 0.5]] * 2), np.array([1, 1]), bins=4) == pytest.approx(0.5)


def test_false_rates_accept_at_the_threshold_and_are_nan_without_claims() -> None:
    genuine, impostor = np.array([0.2, 0.5, 0.9]), np.array([0.1, 0.5, 0.6, 0.7])
    # At 0.5: genuine 0.2 rejected (FRR 1/3); impostors 0.5, 0.6, 0.7 accepted, a score equal to it included (3/4).
    assert false_rates(genuine, impostor, 0.5) == pytest.approx((1 / 3, 3 / 4))
    # Just above 0.5: genuine 0.2 and 0.5 rejected (2/3), impostors 0.6 and 0.7 accepted (2/4).
    assert false_rates(genuine, impostor, np.nextafter(0.5, 1.0)) == pytest.approx((2 / 3, 1 / 2))
    frr, far = false_rates(np.zeros(0), impostor, 0.5)
    assert np.isnan(frr) and far == pytest.approx(3 / 4)
    frr, far = false_rates(genuine, np.zeros(0), 0.5)
    assert frr == pytest.approx(1 / 3) and np.isnan(far)


def test_equal_error_rate_threshold_ties_and_auc_ties_by_hand() -> None:
    genuine = np.array([0.9, 0.8, 0.7, 0.6])
    # Skilled 0.7, 0.3: t=0.8: FRR 2/4, FAR 0; t=0.7: FRR 1/4, FAR 1/2 (gap 1/4, the smallest); t=0.6: FRR 0,
    # FAR 1/2. EER (1/4 + 1/2) / 2 = 3/8 at 0.7. AUC: 0.9, 0.8 beat both (4), 0.7 ties 0.7 (1/2) and beats
    # 0.3 (1), 0.6 beats 0.3 (1): 6.5 / 8.
    rates = equal_error_rate(genuine, np.array([0.7, 0.3]))
    assert (rates.eer, rates.threshold, rates.auc) == pytest.approx((3 / 8, 0.7, 6.5 / 8))
    # One impostor at 0.75: t=0.8: FRR 2/4, FAR 0 (gap 1/2); t=0.75: FRR 2/4, FAR 1 (gap 1/2); tie -> the lower
    # threshold, 0.75, where the EER is (1/2 + 1) / 2 = 3/4 (not 1/4, the mean at 0.8).
    rates = equal_error_rate(genuine, np.array([0.75]))
    assert (rates.eer, rates.threshold, rates.auc) == pytest.approx((0.75, 0.75, 0.5))
    # Scores all equal: one threshold, everything accepted: FRR 0, FAR 1, EER 1/2, AUC 1/2.
    rates = equal_error_rate(np.array([0.4, 0.4]), np.array([0.4]))
    assert (rates.eer, rates.threshold, rates.auc) == pytest.approx((0.5, 0.4, 0.5))
    # No genuine claims: NaN everywhere.
    empty = equal_error_rate(np.zeros(0), np.array([0.1]))
    assert np.isnan([empty.eer, empty.threshold, empty.auc]).all()


def test_threshold_for_far_by_hand() -> None:
    impostor = np.array([0.2, 0.9, 0.4, 0.6])  # sorted high to low: 0.9, 0.6, 0.4, 0.2
    # target 1/4: one accept allowed -> accept strictly above the 2nd highest, 0.6: only 0.9 gets through.
    assert threshold_for_far(impostor, 0.25) == np.nextafter(0.6, np.inf)
    # target 0.3: floor(0.3 * 4) = 1 accept, the same threshold; target 0.5: two accepts, above 0.4.
    assert threshold_for_far(impostor, 0.3) == np.nextafter(0.6, np.inf)
    assert threshold_for_far(impostor, 0.5) == np.nextafter(0.4, np.inf)
    # target 0: nothing accepted, just above the highest.
    assert threshold_for_far(impostor, 0.0) == np.nextafter(0.9, np.inf)
    # target 1: every impostor may pass: the lowest impostor score (FAR 1).
    assert threshold_for_far(impostor, 1.0) == 0.2
    with pytest.raises(ValueError, match="no impostor scores"):
        threshold_for_far(np.zeros(0), 0.1)


def test_threshold_for_far_with_ties_at_the_top_score() -> None:
    """When at least target_far of the impostors tie at the maximum, no threshold at or below that score
    keeps FAR within target: the answer is the next float above the maximum (FAR 0, stricter than asked),
    and a genuine claim scoring exactly the maximum is rejected."""
    impostor = np.array([0.9, 0.9, 0.9, 0.1])
    # target 1/2 allows 2 accepts, but any threshold <= 0.9 accepts 3 (FAR 3/4).
    threshold = threshold_for_far(impostor, 0.5)
    assert threshold == np.nextafter(0.9, np.inf)
    assert false_rates(np.array([0.9, 0.95]), impostor, threshold) == (0.5, 0.0)
    # Every impostor tied: even target 3/4 (3 accepts of 4) gives just above the tie.
    assert threshold_for_far(np.full(4, 0.5), 0.75) == np.nextafter(0.5, np.inf)
    # 3 of 4 tied and target 3/4: 3 accepts allowed, so accepting the whole tie is fine: above 0.1.
    assert threshold_for_far(impostor, 0.75) == np.nextafter(0.1, np.inf)


def test_threshold_for_far_is_the_lowest_when_target_times_count_is_whole() -> None:
    impostor = np.arange(100) / 100.0  # 0.00 .. 0.99
    # target 0.29 of 100 allows 29 accepts: 0.71 .. 0.99, i.e. accept strictly above 0.70.
    assert threshold_for_far(impostor, 0.29) == np.nextafter(0.70, np.inf)


def test_calibration_error_and_reliability_table_by_hand_with_edges() -> None:
    # 4 bins with the right edge inclusive: 0.25 and 0.0 in bin 0, 0.6 in bin 2, 1.0 in bin 3.
    confidence = np.array([0.25, 0.0, 1.0, 0.6])
    correct = np.array([True, False, True, False])
    # Bin 0: 2/4 * |1/2 - 0.125| = 0.1875; bin 2: 1/4 * |0 - 0.6| = 0.15; bin 3: 1/4 * |1 - 1| = 0.
    assert calibration_error(confidence, correct, bins=4) == pytest.approx(0.3375)
    assert calibration_error(confidence, correct.astype(int).tolist(), bins=4) == pytest.approx(0.3375)
    table = reliability_table(confidence, correct, bins=4)
    assert table["centre"] == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert table["count"] == [2.0, 0.0, 1.0, 1.0]
    assert table["confidence"] == pytest.approx([0.125, np.nan, 0.6, 1.0], nan_ok=True)
    assert table["accuracy"] == pytest.approx([0.5, np.nan, 0.0, 1.0], nan_ok=True)
    # One bin: the gap between overall accuracy (1/2) and mean confidence (0.4625).
    assert calibration_error(confidence, correct, bins=1) == pytest.approx(0.0375)


def test_expected_calibration_error_is_the_calibration_error_of_the_top_probability() -> None:
    generator = np.random.default_rng(5)
    probabilities = generator.dirichlet(np.ones(4), size=40)
    labels = generator.integers(0, 4, size=40)
    top, right = probabilities.max(axis=1), np.argmax(probabilities, axis=1) == labels
    for bins in (1, 4, 15):
        assert expected_calibration_error(probabilities, labels, bins) == calibration_error(top, right, bins)
        by_matrix, by_answers = reliability_bins(probabilities, labels, bins), reliability_table(top, right, bins)
        assert set(by_matrix) == set(by_answers)
        for key, values in by_answers.items():
            assert by_matrix[key] == pytest.approx(values, nan_ok=True)


def sklearn_equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """The EER and its threshold as the project computed them on scikit-learn's `roc_curve` before
    `error_curve`: the reference the NumPy curve must meet to the last bit."""
    from sklearn.metrics import roc_curve

    scores = np.concatenate([genuine, impostor]).astype(np.float64)
    truth = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    far, true_accept, thresholds = roc_curve(truth, scores, drop_intermediate=False)
    frr = 1.0 - true_accept
    gap = np.abs(frr - far)
    best = int(np.flatnonzero(gap <= gap.min() + 1e-12)[-1])
    return float((frr[best] + far[best]) / 2), float(thresholds[best])


@pytest.mark.parametrize("seed", range(40))
def test_the_numpy_error_curve_is_scikit_learns_roc_to_the_last_bit(seed: int) -> None:
    """`error_curve` is `roc_curve(drop_intermediate=False)` (FAR = FPR, FRR = 1 - TPR), ties, a single
    claim of a side and float32 scores included; so every EER and threshold stays what it was."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    genuine_count, impostor_count = int(rng.integers(1, 40)), int(rng.integers(1, 60))
    decimals = int(rng.integers(1, 4))  # few decimals: many tied scores, within and across the sides
    genuine = np.round(rng.beta(5, 2, genuine_count), decimals).astype(np.float32 if seed % 2 else np.float64)
    impostor = np.round(rng.beta(2, 5, impostor_count), decimals)
    frr, far, thresholds = error_curve(genuine, impostor)
    truth = np.concatenate([np.ones(genuine_count), np.zeros(impostor_count)])
    scores = np.concatenate([genuine, impostor]).astype(np.float64)
    expected_far, expected_true_accept, expected_thresholds = roc_curve(truth, scores, drop_intermediate=False)
    np.testing.assert_array_equal(far, expected_far)
    np.testing.assert_array_equal(frr, 1.0 - expected_true_accept)
    np.testing.assert_array_equal(thresholds, expected_thresholds)
    rates = equal_error_rate(genuine, impostor, with_auc=False)
    assert (rates.eer, rates.threshold) == sklearn_equal_error_rate(genuine, impostor)
    assert np.isnan(rates.auc)
    assert equal_error_rate(genuine, impostor).auc == pytest.approx(
        float(np.mean((genuine[:, None] > impostor[None, :]) + 0.5 * (genuine[:, None] == impostor[None, :])))
    )

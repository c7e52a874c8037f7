"""Identification, verification and calibration metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.metrics import (
    confusion_counts,
    equal_error_rate,
    expected_calibration_error,
    false_rates,
    identification_metrics,
    per_class_report,
    threshold_for_far,
    top_k_accuracy,
)
from tasks.scores import random_forgery_scores

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

"""Temperature scaling and the unknown threshold on synthetic score tables."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.calibrate import calibration_report, fit_calibration, fit_temperature, negative_log_likelihood
from tasks.scores import ScoreTable, softmax


def sample_labels(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    probabilities = softmax(logits)
    cumulative = probabilities.cumsum(axis=1)
    return (rng.uniform(size=(len(logits), 1)) > cumulative).sum(axis=1)


def test_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, (6000, 5))
    labels = sample_labels(true_logits, rng)
    overconfident = true_logits * 3.0
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert negative_log_likelihood(overconfident, labels, temperature) < negative_log_likelihood(
        overconfident, labels, 1.0
    )
    assert np.array_equal(softmax(overconfident).argmax(axis=1), softmax(overconfident, temperature).argmax(axis=1))


def table(rng: np.random.Generator, classes: int = 4) -> ScoreTable:
    """Genuine rows peak on their class; forgeries are flatter; splits val / calibration / test."""
    logits, claimed, kinds, splits = [], [], [], []
    for split, genuine_count, forgery_count in (("val", 80, 0), ("calibration", 0, 200), ("test", 80, 200)):
        for index in range(genuine_count):
            row = rng.normal(0, 1, classes)
            row[index % classes] += 5
            logits.append(row), claimed.append(index % classes), kinds.append("genuine"), splits.append(split)
        for index in range(forgery_count):
            row = rng.normal(0, 1, classes)
            row[index % classes] += 1.5
            kind = "skilled" if index % 2 else "opposite"
            logits.append(row), claimed.append(index % classes), kinds.append(kind), splits.append(split)
    return ScoreTable(
        np.array(logits, dtype=np.float32),
        np.array(claimed),
        np.array(kinds),
        np.array(splits),
        np.array([f"f{index}" for index in range(len(claimed))]),
    )


def test_threshold_meets_target_far_on_calibration_and_is_reported_on_test() -> None:
    scores = table(np.random.default_rng(1))
    calibration = fit_calibration(scores, "target_far", 0.05)
    unknown = scores.select("calibration")
    top = softmax(unknown.logits, calibration.temperature).max(axis=1)
    assert np.mean(top >= calibration.threshold) <= 0.05
    report = calibration_report(scores, calibration, reference_threshold=0.40)
    for key in (
        "temperature",
        "threshold",
        "frr",
        "far_skilled",
        "far_opposite",
        "far_random",
        "expected_calibration_error_before",
        "expected_calibration_error_after",
    ):
        assert key in report
    assert report["far_skilled"] < 0.2 and report["frr"] < 0.2
    assert report["accuracy_accepted"] == pytest.approx(1.0)
    assert report["reference_fixed_threshold"]["threshold"] == 0.40
    # The fixed 0.40 on uncalibrated scores lets far more forgeries through than the fitted threshold.
    assert report["reference_fixed_threshold"]["open_set"]["far_skilled"] > report["far_skilled"]


def test_equal_error_objective_balances_the_two_errors_on_calibration_data() -> None:
    scores = table(np.random.default_rng(2))
    calibration = fit_calibration(scores, "eer", 0.05)
    known = softmax(scores.select("val", "genuine").logits, calibration.temperature).max(axis=1)
    unknown = softmax(scores.select("calibration").logits, calibration.temperature).max(axis=1)
    assert abs(np.mean(known < calibration.threshold) - np.mean(unknown >= calibration.threshold)) < 0.05


def test_empty_calibration_split_is_a_clear_error() -> None:
    scores = table(np.random.default_rng(3))
    keep = scores.splits != "calibration"
    without = ScoreTable(
        scores.logits[keep], scores.claimed[keep], scores.kinds[keep], scores.splits[keep], scores.paths[keep]
    )
    with pytest.raises(ValueError, match="calibration split is empty"):
        fit_calibration(without, "target_far", 0.05)


def test_perfectly_separated_validation_stops_at_the_lower_temperature_bound() -> None:
    logits = np.eye(3)[np.arange(30) % 3] * 10.0
    temperature = fit_temperature(logits, np.arange(30) % 3)
    assert temperature == pytest.approx(0.5, abs=1e-3)


def test_too_few_unknowns_for_the_target_far_is_refused() -> None:
    scores = table(np.random.default_rng(4))
    keep = (scores.splits != "calibration") | (np.arange(len(scores)) % 20 == 0)
    few = ScoreTable(
        scores.logits[keep], scores.claimed[keep], scores.kinds[keep], scores.splits[keep], scores.paths[keep]
    )
    assert len(few.select("calibration")) == 10
    with pytest.raises(ValueError, match=r"too few .* at least 20"):
        fit_calibration(few, "target_far", 0.05)
    assert fit_calibration(few, "target_far", 0.1).threshold > 0  # 10 unknowns can show a FAR of 0.1
    assert fit_calibration(few, "eer", 0.05).threshold > 0


def test_test_rows_never_influence_the_fit() -> None:
    """No leakage: scrambling every test logit leaves temperature and threshold unchanged."""
    scores = table(np.random.default_rng(5))
    scrambled_logits = scores.logits.copy()
    is_test = scores.splits == "test"
    scrambled_logits[is_test] = np.random.default_rng(6).normal(0, 10, scrambled_logits[is_test].shape)
    scrambled = ScoreTable(scrambled_logits, scores.claimed, scores.kinds, scores.splits, scores.paths)
    assert fit_calibration(scrambled, "target_far", 0.05) == fit_calibration(scores, "target_far", 0.05)

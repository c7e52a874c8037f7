"""The confidence printed with an answer: Platt scaling of the verifier's claim score, and its ECE."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tasks.evaluation.calibrate import PLATT_INVERSE_PENALTY, fit_confidence
from tasks.evaluation.calibration_report import answer_confidence, confidence_calibration
from tasks.evaluation.scores import ScoreTable, claim_probability
from tasks.workspace.errors import CalibrationError
from tests.support.score_tables import score_table

LOG3 = math.log(3.0)


def table_of(rows: list[tuple[str, str, int, int, float]], classes: int = 3) -> ScoreTable:
    """Rows of (split, kind, claimed writer, top writer by logits, verification score for the top writer)."""
    logits = np.zeros((len(rows), classes))
    verification = np.full((len(rows), classes), -20.0)
    for index, (_split, _kind, _claimed, top, score) in enumerate(rows):
        logits[index, top] = 3.0
        verification[index, top] = score
    return score_table(
        logits, verification, [row[2] for row in rows], [row[1] for row in rows], [row[0] for row in rows]
    )


def test_claim_probability_is_the_logistic_of_the_scaled_score() -> None:
    scores = np.array([0.0, 1.0, -2.0])
    expected = 1.0 / (1.0 + np.exp(-(2.0 * scores - 1.0)))
    assert claim_probability(scores, 2.0, -1.0) == pytest.approx(expected)
    assert claim_probability(np.array([LOG3, -LOG3, 0.0]), 1.0, 0.0) == pytest.approx([0.75, 0.25, 0.5])
    assert claim_probability([1.0], 1.0, 0.0).dtype == np.float64


def test_claim_probability_does_not_overflow_at_extreme_scores() -> None:
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        probabilities = claim_probability(np.array([1e6, -1e6, 0.0]), 1.0, 0.0)
        steep = claim_probability(np.array([1e6, -1e6]), -1e3, 5.0)
    assert probabilities.tolist() == [1.0, 0.0, 0.5]
    assert steep.tolist() == [0.0, 1.0]
    assert np.all(np.isfinite(probabilities)) and np.all(np.isfinite(steep))


def test_fit_confidence_matches_a_logistic_regression_on_every_claim() -> None:
    # Three images of writers 2, 0, 1 (not the row order, so a misaligned truth would show), scored
    # against every writer; the true claims score higher, with overlap.
    scores = np.array([[0.1, 0.6, 0.8], [0.9, 0.2, 0.7], [0.3, 0.5, 0.4]])
    claimed = np.array([2, 0, 1])
    slope, intercept = fit_confidence(scores, claimed)
    features = [[scores[image, writer]] for image in range(3) for writer in range(3)]
    truth = [claimed[image] == writer for image in range(3) for writer in range(3)]
    reference = LogisticRegression(C=PLATT_INVERSE_PENALTY).fit(np.array(features), np.array(truth))
    assert slope == pytest.approx(reference.coef_[0, 0])
    assert intercept == pytest.approx(reference.intercept_[0])
    assert slope > 0


def test_fit_confidence_slope_follows_the_score_direction_and_stays_finite_when_separated() -> None:
    claimed = np.array([0, 1, 2, 0])
    separated = np.where(np.arange(3)[np.newaxis, :] == claimed[:, np.newaxis], 5.0, -5.0)
    slope, intercept = fit_confidence(separated, claimed)
    assert math.isfinite(slope) and math.isfinite(intercept) and slope > 0
    # The true claims are more likely than not at their score, the false ones less.
    assert claim_probability(np.array([5.0]), slope, intercept)[0] > 0.5
    assert claim_probability(np.array([-5.0]), slope, intercept)[0] < 0.5
    reversed_slope, _ = fit_confidence(-separated, claimed)
    assert reversed_slope < 0


def test_fit_confidence_needs_validation_images() -> None:
    with pytest.raises(CalibrationError, match="val_fraction"):
        fit_confidence(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))


def test_answer_confidence_is_the_top_writers_calibrated_claim() -> None:
    table = table_of(
        [("test", "genuine", 0, 0, LOG3), ("test", "genuine", 1, 2, -LOG3), ("test", "genuine", 2, 2, 0.0)]
    )
    # The verification score of another writer, however high, is not the answer's.
    table.verification[1, 1] = 50.0
    confidence, correct = answer_confidence(table, 1.0, 0.0)
    assert confidence == pytest.approx([0.75, 0.25, 0.5])
    assert correct.tolist() == [True, False, True]
    shifted, _ = answer_confidence(table, 2.0, -LOG3)
    # 2 * ln 3 - ln 3 = ln 3; -2 ln 3 - ln 3 = -3 ln 3 (1 / 28); -ln 3 (1 / 4).
    assert shifted == pytest.approx([0.75, 1 / 28, 0.25])


def test_confidence_calibration_by_hand_on_test_genuine_only() -> None:
    table = table_of(
        [
            ("test", "genuine", 0, 0, LOG3),  # confidence 0.75, right
            ("test", "genuine", 1, 0, LOG3),  # confidence 0.75, wrong
            ("test", "genuine", 2, 1, -LOG3),  # confidence 0.25, wrong
            ("test", "genuine", 2, 2, 0.0),  # confidence 0.5, right
            ("val", "genuine", 0, 1, 9.0),  # not test: would add a confident wrong answer
            ("test", "skilled", 0, 1, 9.0),  # not genuine: likewise
        ]
    )
    result = confidence_calibration(table, 1.0, 0.0)
    # 15 bins: 0.75 in bin 11, 0.25 in bin 3, 0.5 in bin 7.
    # ECE = 2/4 * |1/2 - 0.75| + 1/4 * |0 - 0.25| + 1/4 * |1 - 0.5| = 0.125 + 0.0625 + 0.125.
    assert result["expected_calibration_error"] == pytest.approx(0.3125)
    assert result["mean_confidence"] == pytest.approx(0.5625)
    assert result["accuracy"] == pytest.approx(0.5)
    reliability = result["reliability"]
    assert sum(reliability["count"]) == 4
    assert (reliability["count"][3], reliability["count"][7], reliability["count"][11]) == (1.0, 1.0, 2.0)
    assert reliability["confidence"][11] == pytest.approx(0.75)
    assert reliability["accuracy"][11] == pytest.approx(0.5)


def test_confidence_calibration_is_zero_for_answers_right_as_often_as_promised() -> None:
    rows = [("test", "genuine", 0, 0, LOG3)] * 3 + [("test", "genuine", 1, 0, LOG3)]
    result = confidence_calibration(table_of(rows), 1.0, 0.0)
    assert result["expected_calibration_error"] == pytest.approx(0.0, abs=1e-12)


def test_the_platt_fit_is_not_held_off_its_optimum_by_its_penalty() -> None:
    """On overlapping claims (an optimum exists) the slope is the unpenalised fit's: the penalty only
    keeps a perfectly separated validation set finite, it does not shrink real fits (issue 24)."""
    rng = np.random.default_rng(5)
    writers, images = 6, 60
    claimed = rng.integers(0, writers, images)
    scores = rng.normal(-0.8, 0.3, (images, writers))
    scores[np.arange(images), claimed] = rng.normal(0.6, 0.4, images)  # true claims score higher, with overlap
    slope, intercept = fit_confidence(scores, claimed)
    truth = (np.arange(writers)[np.newaxis, :] == claimed[:, np.newaxis]).ravel()
    unpenalised = LogisticRegression(penalty=None).fit(scores.reshape(-1, 1), truth)
    assert slope == pytest.approx(unpenalised.coef_[0, 0], rel=1e-2)
    assert intercept == pytest.approx(unpenalised.intercept_[0], rel=1e-2)

"""Saturated scores cannot make the calibrated model answer unknown to everything: the threshold is
on the verifier's linear score (which does not saturate), and a threshold that would reject every
genuine validation claim is refused with a message that says what to change."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.calibrate import fit_calibration
from tasks.evaluation.scores import ScoreTable, softmax
from tasks.workspace.errors import CalibrationError

CLASSES = 3
GAP = 60.0  # float64 softmax is exactly 1.0 beyond a logit gap of about 37


def row_logits(writer: int) -> list[float]:
    logits = [0.0] * CLASSES
    logits[writer] = GAP
    return logits


def build(rows: list[tuple[str, str, int, float]]) -> ScoreTable:
    """(split, kind, claimed writer, verifier score of that writer) rows; every logit row saturates."""
    verification = np.full((len(rows), CLASSES), -2.0)
    for index, (_split, _kind, writer, score) in enumerate(rows):
        verification[index, writer] = score
    return ScoreTable(
        logits=np.array([row_logits(row[2]) for row in rows], dtype=np.float32),
        verification=verification,
        embeddings=np.zeros((len(rows), 2), dtype=np.float32),
        claimed=np.array([row[2] for row in rows]),
        kinds=np.array([row[1] for row in rows]),
        splits=np.array([row[0] for row in rows]),
        paths=np.array([f"f{index}" for index in range(len(rows))]),
    )


def genuine_and_forgeries(forgery_scores: list[float]) -> ScoreTable:
    genuine = [("val", "genuine", index % CLASSES, 1.0 + 0.1 * index) for index in range(6)]
    forgeries = [("calibration", "skilled", index % CLASSES, score) for index, score in enumerate(forgery_scores)]
    return build(genuine + forgeries)


def test_saturated_softmax_does_not_saturate_the_threshold() -> None:
    """Every impostor's softmax probability for its claimed writer is exactly 1.0, yet the verifier's
    scores still rank them below the genuine claims, and the threshold falls between the two."""
    forgeries = [round(-1.0 + 0.1 * index, 10) for index in range(20)]  # -1.0 .. 0.9
    table = genuine_and_forgeries(forgeries)
    impostors = table.select("calibration")
    assert np.all(softmax(impostors.logits)[np.arange(len(impostors)), impostors.claimed] == 1.0)
    calibration = fit_calibration(table, "target_far", 0.1)
    # FAR <= 0.1 of 20 forgeries allows 2 through (0.9, 0.8): the threshold is the next float above 0.7.
    assert calibration.threshold == np.nextafter(0.7, np.inf)
    assert np.mean(np.array(forgeries) >= calibration.threshold) == 0.1
    genuine = np.array([1.0 + 0.1 * index for index in range(6)])  # 1.0 .. 1.5: all accepted
    assert np.all(genuine >= calibration.threshold)


def test_a_threshold_that_rejects_every_genuine_claim_is_refused() -> None:
    """Forgeries scoring as high as the best genuine claim: meeting the FAR would reject them all."""
    table = genuine_and_forgeries([5.0] * 10 + [0.0] * 10)
    with pytest.raises(CalibrationError, match="rejects all 6 validation genuine claims.*target_far"):
        fit_calibration(table, "target_far", 0.1)

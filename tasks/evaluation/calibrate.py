"""The confidence and the verification threshold, fitted on validation and calibration data, judged on test.

- Confidence: the probability printed with an answer is the chance that the answered writer signed
  the image, from the verifier's score of that claim by Platt scaling (a logistic regression on the
  score), fitted on every validation genuine image claimed as every enrolled writer (its own writer:
  a true claim; the others: random forgeries). Measured on CEDAR (bench/README.md), temperature
  scaling of the scores either sat at its bound or ran to T -> 0 when validation had no error (every
  probability 1), while the Platt fit stays finite and keeps the test ECE under 0.05; it prices in
  the enrolled writers only: a skilled forgery is the threshold's business, not the confidence's.
- Temperature: the scalar T minimising the negative log-likelihood of the validation genuine
  images (Guo et al., 2017), for the softmax baseline compared side by side.
- Threshold on the writer-dependent verifier's score of a claim (`tasks.model.verifier`), with the
  validation genuine images claimed as their own writer as genuine claims, and the `calibration`
  split's skilled forgeries (all its forgeries and opposite-hand samples when it has no skilled
  ones) as impostors: the lowest threshold whose FAR on them is at most `target_far`, or the
  equal-error point. The calibration split holds the forgeries of other writers than the test
  split (`tasks.data.split`), so the test FAR is measured on writers the threshold never saw.
- One threshold serves both questions. Verification: accept "W signed this" when the verifier's
  score for W reaches it. Identification: answer the top writer of the classifier when the
  verifier accepts the claim that this writer signed, else "unknown".
- What the fitted values do on test, which fitting never sees, is `tasks.evaluation.calibration_report`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression

from tasks.evaluation.metrics import equal_error_rate, threshold_for_far
from tasks.evaluation.scores import VERIFIER, ScoreTable, calibration_impostors, selection_claims, softmax
from tasks.workspace.errors import CalibrationError

# Below 0.5 the fit is almost always chasing a validation set it classifies perfectly (the NLL
# then falls towards 0 as T falls towards 0), which would saturate every probability at 1.
TEMPERATURE_BOUNDS = (0.5, 20.0)
TINY_PROBABILITY = 1e-12
# Inverse L2 penalty of the Platt fit: weak enough not to hold the slope off its optimum (on CEDAR the
# slope is within 0.1% of the unpenalised fit's, while scikit-learn's default C = 1 shrank it by a third
# and left the confidence under-confident, ECE 0.067 against 0.037), and still finite when the
# validation claims are perfectly separated (the unpenalised slope then grows without bound).
PLATT_INVERSE_PENALTY = 1e4


@dataclass(frozen=True)
class Calibration:
    """What inference needs: the temperature of the probabilities and the threshold on `score`."""

    temperature: float
    threshold: float
    objective: str
    target_far: float
    score: str = VERIFIER
    genuine_claims: int = 0
    impostor_claims: int = 0
    impostor_kinds: tuple[str, ...] = ()
    confidence_slope: float = 1.0
    confidence_intercept: float = 0.0


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of the true labels under softmax(logits / temperature)."""
    probabilities = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(probabilities, TINY_PROBABILITY))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising validation NLL, searched on a log scale within TEMPERATURE_BOUNDS."""
    if not len(labels):
        raise CalibrationError("no validation images to fit the temperature on: set prepare.val_fraction above 0")
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)), bounds=(low, high), method="bounded"
    )
    return float(math.exp(result.x))


def fit_confidence(scores: np.ndarray, claimed: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the Platt scaling of claim scores: scikit-learn's logistic regression,
    with a weak L2 penalty (`PLATT_INVERSE_PENALTY`: finite even when validation separates the claims
    perfectly), of
    "this image's writer is w" on the verifier's score for w, over every validation image
    `scores` (images x writers) claimed as every writer."""
    if not len(claimed):
        raise CalibrationError("no validation images to fit the confidence on: set prepare.val_fraction above 0")
    truth = (np.arange(scores.shape[1])[np.newaxis, :] == np.asarray(claimed)[:, np.newaxis]).ravel()
    model = LogisticRegression(C=PLATT_INVERSE_PENALTY).fit(np.asarray(scores, dtype=np.float64).reshape(-1, 1), truth)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def fit_threshold(genuine: np.ndarray, impostor: np.ndarray, objective: str, target_far: float) -> float:
    """Threshold on claim scores: for `target_far` on the impostors, or at the equal-error point."""
    if objective == "target_far":
        return threshold_for_far(impostor, target_far)
    return equal_error_rate(genuine, impostor, with_auc=False).threshold


def minimum_unknowns(target_far: float) -> int:
    """Fewest unknowns that can show a FAR of `target_far` at all: one false accept in 1 / target_far."""
    return math.ceil(1.0 / target_far - 1e-9)


def fit_calibration(table: ScoreTable, objective: str, target_far: float) -> Calibration:
    """Fit the temperature on `val` genuine and the verification threshold on `val` genuine claims
    (genuine) against the `calibration` split (impostors, writer-disjoint from the test ones)."""
    known = table.select("val", "genuine")
    if not len(table.select("calibration")):
        raise CalibrationError(
            "the calibration split is empty: the dataset has no forgeries or opposite-hand samples for "
            "writers with training images; set prepare.calibration_fraction above 0"
        )
    impostors = calibration_impostors(table)
    if objective == "target_far" and len(impostors) < minimum_unknowns(target_far):
        raise CalibrationError(
            f"the calibration split has {len(impostors)} {', '.join(sorted(set(impostors.kinds)))} samples, too few "
            f"to set a threshold for calibrate.target_far={target_far}: a FAR that small needs at least "
            f"{minimum_unknowns(target_far)} of them (one false accept in 1/target_far). Raise "
            "calibrate.target_far, use calibrate.objective: eer, or give the dataset more forgeries."
        )
    temperature = fit_temperature(known.logits, known.claimed)
    slope, intercept = fit_confidence(known.verification, known.claimed)
    genuine_scores, impostor_scores = selection_claims(table, VERIFIER)
    threshold = fit_threshold(genuine_scores, impostor_scores, objective, target_far)
    if len(genuine_scores) and not np.any(genuine_scores >= threshold):
        raise CalibrationError(
            f"the threshold {threshold:.6g} fitted for calibrate.objective={objective} "
            f"(target_far {target_far}) rejects all {len(genuine_scores)} validation genuine claims: the "
            "verifier's scores do not separate them from the calibration forgeries at that FAR, and the "
            "model would answer unknown to everything. Raise calibrate.target_far or use calibrate.objective: "
            "eer; if it persists, the training data or image size is too small for this dataset."
        )
    return Calibration(
        temperature=temperature,
        threshold=threshold,
        objective=objective,
        target_far=target_far,
        score=VERIFIER,
        genuine_claims=len(genuine_scores),
        impostor_claims=len(impostor_scores),
        impostor_kinds=tuple(sorted(set(impostors.kinds))),
        confidence_slope=slope,
        confidence_intercept=intercept,
    )

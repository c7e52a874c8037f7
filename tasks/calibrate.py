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
- Threshold on the writer-dependent verifier's score of a claim (`tasks.verifier`), with the
  validation genuine images claimed as their own writer as genuine claims, and the `calibration`
  split's skilled forgeries (all its forgeries and opposite-hand samples when it has no skilled
  ones) as impostors: the lowest threshold whose FAR on them is at most `target_far`, or the
  equal-error point. The calibration split holds the forgeries of other writers than the test
  split (`tasks.split`), so the test FAR is measured on writers the threshold never saw.
- One threshold serves both questions. Verification: accept "W signed this" when the verifier's
  score for W reaches it. Identification: answer the top writer of the classifier when the
  verifier accepts the claim that this writer signed, else "unknown".
- On test, which fitting never sees: FRR and FAR per impostor kind at that threshold, beside
  the a-posteriori EER; open-set identification results of the same rule. The reference
  project's fixed 0.40 threshold on uncalibrated softmax probabilities is evaluated the same
  way, side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression

from tasks.errors import CalibrationError
from tasks.metrics import (
    calibration_error,
    equal_error_rate,
    expected_calibration_error,
    false_rates,
    reliability_table,
    threshold_for_far,
)
from tasks.partitions import flat_intervals, partition_report, unenrolled_accepted
from tasks.scores import (
    IMPOSTOR_KINDS,
    SOFTMAX,
    VERIFIER,
    ScoreTable,
    calibration_impostors,
    claim_probability,
    claimed_scores,
    selection_claims,
    softmax,
    verification_scores,
)

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


def answer_confidence(table: ScoreTable, slope: float, intercept: float) -> tuple[np.ndarray, np.ndarray]:
    """The confidence printed with each answer of `table`'s rows (the calibrated probability that
    the top writer signed), and whether that top writer is the row's writer."""
    top = np.argmax(table.logits, axis=1)
    confidence = claim_probability(claimed_scores(table.verification.astype(np.float64), top), slope, intercept)
    return confidence, top == table.claimed


def confidence_calibration(table: ScoreTable, slope: float, intercept: float) -> dict[str, object]:
    """ECE and reliability bins of the answers' confidence on the test genuine images."""
    genuine = table.select("test", "genuine")
    confidence, correct = answer_confidence(genuine, slope, intercept)
    return {
        "expected_calibration_error": calibration_error(confidence, correct),
        "reliability": reliability_table(confidence, correct),
        "mean_confidence": float(confidence.mean()) if len(confidence) else float("nan"),
        "accuracy": float(correct.mean()) if len(correct) else float("nan"),
    }


def fit_threshold(genuine: np.ndarray, impostor: np.ndarray, objective: str, target_far: float) -> float:
    """Threshold on claim scores: for `target_far` on the impostors, or at the equal-error point."""
    if objective == "target_far":
        return threshold_for_far(impostor, target_far)
    return equal_error_rate(genuine, impostor).threshold


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


def open_set_results(table: ScoreTable, temperature: float, threshold: float, source: str) -> dict[str, float]:
    """Test results of "the classifier's top writer if the claim that it signed scores >= threshold
    (on `source`: the verifier, or the calibrated softmax), else unknown"."""
    genuine = table.select("test", "genuine")
    probabilities = softmax(genuine.logits, temperature)
    top = np.argmax(probabilities, axis=1)
    accepted = claimed_scores(genuine.claim_scores(source, temperature), top) >= threshold
    correct = top == genuine.claimed
    results = {
        "frr": float(1.0 - accepted.mean()) if len(accepted) else float("nan"),
        "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else float("nan"),
        "accuracy_overall": float((correct & accepted).mean()) if len(accepted) else float("nan"),
    }
    for kind in IMPOSTOR_KINDS:
        rows = table.select("test", kind)
        if not len(rows):
            results[f"far_{kind}"] = float("nan")
            continue
        rows_top = np.argmax(rows.logits, axis=1)
        results[f"far_{kind}"] = float(
            np.mean(claimed_scores(rows.claim_scores(source, temperature), rows_top) >= threshold)
        )
    return results


def verification_results(table: ScoreTable, temperature: float, threshold: float, source: str) -> dict[str, float]:
    """Test FRR and FAR per impostor kind when a claim is accepted at `threshold` on `source`'s score."""
    scores = verification_scores(table, "test", source, temperature)
    results: dict[str, float] = {}
    for kind in (*IMPOSTOR_KINDS, "random"):
        frr, far = false_rates(scores["genuine"], scores[kind], threshold)
        results["frr"] = frr
        results[f"far_{kind}"] = far
        results[f"eer_{kind}_a_posteriori"] = equal_error_rate(scores["genuine"], scores[kind]).eer
    return results


REFERENCE_NOTE = (
    "the reference project's fixed threshold on this model's softmax at T = 1: comparable only for a head trained "
    "with softmax (model.head linear or mlp); bench/quality.py evaluates the reference recipe as its own model"
)


def calibration_report(
    table: ScoreTable,
    calibration: Calibration,
    reference_threshold: float,
    partitions: int = 0,
    calibration_fraction: float = 0.5,
    partition_seed: int = 0,
) -> dict[str, object]:
    """Everything `metrics/calibrate_details.json` holds: the calibrated operating point on test first,
    then the same figures over `partitions` writer partitions (mean and 95% interval), the open set,
    the confidence's calibration, the fitted values, and the reference's rule side by side.

    The top-level `frr` and `far_<kind>` are verification results on test at the calibrated
    threshold (the field's protocol); `open_set` has what the same threshold does to identification,
    `unenrolled_accepted` how often a never-enrolled writer's signature is answered as an enrolled one.
    """
    val_genuine = table.select("val", "genuine")
    open_set = open_set_results(table, calibration.temperature, calibration.threshold, calibration.score)
    open_set["unenrolled_accepted"] = unenrolled_accepted(table, calibration.threshold)
    verification = verification_results(table, calibration.temperature, calibration.threshold, calibration.score)
    confidence = confidence_calibration(table, calibration.confidence_slope, calibration.confidence_intercept)
    report: dict[str, object] = {
        "frr": verification["frr"],
        "far_skilled": verification["far_skilled"],
        "far_random": verification["far_random"],
        "unenrolled_accepted": open_set["unenrolled_accepted"],
        "expected_calibration_error": confidence["expected_calibration_error"],
        "far_simple": verification["far_simple"],
        "far_opposite": verification["far_opposite"],
        "eer_skilled_a_posteriori": verification["eer_skilled_a_posteriori"],
        "threshold": calibration.threshold,
        "score": calibration.score,
        "objective": calibration.objective,
        "target_far": calibration.target_far,
        "threshold_fitted_on": {
            "genuine": f"{calibration.genuine_claims} validation genuine claims",
            "impostors": (
                f"{calibration.impostor_claims} calibration-split {'/'.join(calibration.impostor_kinds)} claims"
            ),
        },
    }
    if partitions:
        partition_summary = partition_report(
            table, calibration_fraction, partitions, partition_seed, calibration.objective, calibration.target_far
        )
        report["partitions"] = partition_summary
        report.update(flat_intervals(partition_summary))
    report.update(
        {
            "accuracy_accepted": open_set["accuracy_accepted"],
            "open_set": open_set,
            "verification": verification,
            "confidence": {
                "method": "Platt scaling of the verifier's claim score, fitted on validation claims",
                "slope": calibration.confidence_slope,
                "intercept": calibration.confidence_intercept,
                **confidence,
            },
            "temperature": calibration.temperature,
            "temperature_at_bound": bool(
                min(abs(calibration.temperature - bound) for bound in TEMPERATURE_BOUNDS) < 1e-3
            ),
            "validation_nll_before": negative_log_likelihood(val_genuine.logits, val_genuine.claimed, 1.0),
            "validation_nll_after": negative_log_likelihood(
                val_genuine.logits, val_genuine.claimed, calibration.temperature
            ),
            "softmax_expected_calibration_error": softmax_calibration_errors(table, calibration.temperature),
            "reference_fixed_threshold": {
                "note": REFERENCE_NOTE,
                "threshold": reference_threshold,
                "temperature": 1.0,
                "score": SOFTMAX,
                "open_set": open_set_results(table, 1.0, reference_threshold, SOFTMAX),
                "verification": verification_results(table, 1.0, reference_threshold, SOFTMAX),
            },
        }
    )
    return report


def softmax_calibration_errors(table: ScoreTable, temperature: float) -> dict[str, float]:
    """ECE of the classifier's top softmax probability on test genuine, at T = 1 and at the fitted T
    (the baseline the printed confidence replaced)."""
    genuine = table.select("test", "genuine")
    return {
        "temperature_1": expected_calibration_error(softmax(genuine.logits), genuine.claimed),
        "fitted_temperature": expected_calibration_error(softmax(genuine.logits, temperature), genuine.claimed),
    }

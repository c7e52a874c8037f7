"""Temperature scaling and the "unknown" threshold, fitted on calibration data, judged on test.

- Temperature: the scalar T minimising the negative log-likelihood of the validation genuine
  images (Guo et al., 2017); it changes confidences, never the top-1 answer.
- Threshold on the top calibrated probability, with the validation genuine images as knowns and
  the `calibration` split (forgeries, opposite-hand) as unknowns: the lowest threshold whose FAR
  on those unknowns is at most `target_far`, or the equal-error point.
- On test, which fitting never sees: open-set results of the rule "answer the top writer if its
  probability reaches the threshold, else unknown", and verification results of the same
  threshold on the claimed writer's probability. The reference project's fixed 0.40 threshold
  on uncalibrated probabilities is evaluated the same way, side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from tasks.errors import CalibrationError
from tasks.metrics import equal_error_rate, expected_calibration_error, false_rates, threshold_for_far
from tasks.scores import IMPOSTOR_KINDS, ScoreTable, softmax, verification_scores

# Below 0.5 the fit is almost always chasing a validation set it classifies perfectly (the NLL
# then falls towards 0 as T falls towards 0), which would saturate every probability at 1.
TEMPERATURE_BOUNDS = (0.5, 20.0)
TINY_PROBABILITY = 1e-12


@dataclass(frozen=True)
class Calibration:
    """What inference needs: the temperature and the threshold on the top calibrated probability."""

    temperature: float
    threshold: float
    objective: str
    target_far: float


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


def fit_threshold(known_top: np.ndarray, unknown_top: np.ndarray, objective: str, target_far: float) -> float:
    """Threshold on the top probability: for `target_far` on the unknowns, or at the equal-error point."""
    if objective == "target_far":
        return threshold_for_far(unknown_top, target_far)
    return equal_error_rate(known_top, unknown_top).threshold


def minimum_unknowns(target_far: float) -> int:
    """Fewest unknowns that can show a FAR of `target_far` at all: one false accept in 1 / target_far."""
    return math.ceil(1.0 / target_far - 1e-9)


def fit_calibration(table: ScoreTable, objective: str, target_far: float) -> Calibration:
    """Fit temperature and threshold on `val` genuine (knowns) and the `calibration` split (unknowns)."""
    known = table.select("val", "genuine")
    unknown = table.select("calibration")
    if not len(unknown):
        raise CalibrationError(
            "the calibration split is empty: the dataset has no forgeries or opposite-hand samples for "
            "writers with training images; set prepare.calibration_fraction above 0"
        )
    if objective == "target_far" and len(unknown) < minimum_unknowns(target_far):
        raise CalibrationError(
            f"the calibration split has {len(unknown)} forgeries / opposite-hand samples, too few to set a "
            f"threshold for calibrate.target_far={target_far}: a FAR that small needs at least "
            f"{minimum_unknowns(target_far)} of them (one false accept in 1/target_far). Raise "
            "calibrate.target_far, use calibrate.objective: eer, or give the dataset more forgeries."
        )
    temperature = fit_temperature(known.logits, known.claimed)
    known_top = softmax(known.logits, temperature).max(axis=1)
    unknown_top = softmax(unknown.logits, temperature).max(axis=1)
    return Calibration(temperature, fit_threshold(known_top, unknown_top, objective, target_far), objective, target_far)


def open_set_results(table: ScoreTable, temperature: float, threshold: float) -> dict[str, float]:
    """Test results of "top writer if its probability >= threshold, else unknown"."""
    genuine = table.select("test", "genuine")
    probabilities = softmax(genuine.logits, temperature)
    accepted = probabilities.max(axis=1) >= threshold
    correct = np.argmax(probabilities, axis=1) == genuine.claimed
    results = {
        "frr": float(1.0 - accepted.mean()) if len(accepted) else float("nan"),
        "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else float("nan"),
        "accuracy_overall": float((correct & accepted).mean()) if len(accepted) else float("nan"),
    }
    for kind in IMPOSTOR_KINDS:
        rows = table.select("test", kind)
        top = softmax(rows.logits, temperature).max(axis=1) if len(rows) else np.zeros(0)
        results[f"far_{kind}"] = float(np.mean(top >= threshold)) if len(rows) else float("nan")
    return results


def verification_results(table: ScoreTable, temperature: float, threshold: float) -> dict[str, float]:
    """Test FRR and FAR per impostor kind when a claim is accepted at `threshold` on its writer's probability."""
    scores = verification_scores(table, "test", temperature)
    results: dict[str, float] = {}
    for kind in (*IMPOSTOR_KINDS, "random"):
        frr, far = false_rates(scores["genuine"], scores[kind], threshold)
        results["frr"] = frr
        results[f"far_{kind}"] = far
    return results


def calibration_report(table: ScoreTable, calibration: Calibration, reference_threshold: float) -> dict[str, object]:
    """Everything `metrics/calibrate.json` holds: fitted values, test results, the reference side by side."""
    test_genuine = table.select("test", "genuine")
    val_genuine = table.select("val", "genuine")
    open_set = open_set_results(table, calibration.temperature, calibration.threshold)
    verification = verification_results(table, calibration.temperature, calibration.threshold)
    return {
        "temperature": calibration.temperature,
        "temperature_at_bound": bool(min(abs(calibration.temperature - bound) for bound in TEMPERATURE_BOUNDS) < 1e-3),
        "threshold": calibration.threshold,
        "objective": calibration.objective,
        "target_far": calibration.target_far,
        "frr": open_set["frr"],
        "accuracy_accepted": open_set["accuracy_accepted"],
        "far_skilled": open_set["far_skilled"],
        "far_simple": open_set["far_simple"],
        "far_opposite": open_set["far_opposite"],
        "far_random": verification["far_random"],
        "expected_calibration_error_before": expected_calibration_error(
            softmax(test_genuine.logits), test_genuine.claimed
        ),
        "expected_calibration_error_after": expected_calibration_error(
            softmax(test_genuine.logits, calibration.temperature), test_genuine.claimed
        ),
        "validation_nll_before": negative_log_likelihood(val_genuine.logits, val_genuine.claimed, 1.0),
        "validation_nll_after": negative_log_likelihood(
            val_genuine.logits, val_genuine.claimed, calibration.temperature
        ),
        "open_set": open_set,
        "verification": verification,
        "reference_fixed_threshold": {
            "threshold": reference_threshold,
            "temperature": 1.0,
            "open_set": open_set_results(table, 1.0, reference_threshold),
            "verification": verification_results(table, 1.0, reference_threshold),
        },
    }

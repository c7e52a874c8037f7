"""What the calibrated model does on test, which fitting never sees (`metrics/calibrate_details.json`).

FRR and FAR per impostor kind at the calibrated threshold, beside the a-posteriori EER; open-set
identification results of the same rule; the confidence's calibration (ECE, reliability bins);
the same figures over writer partitions. The reference project's fixed 0.40 threshold on
uncalibrated softmax probabilities is evaluated the same way, side by side. The fitting is
`tasks.evaluation.calibrate`.
"""

from __future__ import annotations

import numpy as np

from tasks.evaluation.calibrate import TEMPERATURE_BOUNDS, Calibration, negative_log_likelihood
from tasks.evaluation.metrics import (
    calibration_error,
    equal_error_rate,
    expected_calibration_error,
    false_rates,
    reliability_table,
)
from tasks.evaluation.partitions import flat_intervals, partition_report, unenrolled_accepted
from tasks.evaluation.scores import (
    IMPOSTOR_KINDS,
    SOFTMAX,
    ScoreTable,
    claim_probability,
    claimed_scores,
    softmax,
    verification_scores,
)


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
        results[f"eer_{kind}_a_posteriori"] = equal_error_rate(scores["genuine"], scores[kind], with_auc=False).eer
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

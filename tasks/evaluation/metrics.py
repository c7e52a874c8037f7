"""The field's metrics, on arrays: identification (accuracy, F1, top-k) and verification (FAR,
FRR, ROC AUC, EER), plus calibration error. Pure NumPy / scikit-learn, no model in sight.

Verification convention: a score is the probability the classifier gives the *claimed* writer;
a claim is accepted when its score is at or above the threshold. FRR is the share of genuine
claims rejected; FAR the share of impostor claims (forgeries, opposite hand, other writers)
accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score, roc_curve

CALIBRATION_BINS = 15
RATE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class ErrorRates:
    """Equal error rate of genuine against impostor scores, and where it happens."""

    eer: float
    threshold: float
    auc: float


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose true label is among the `k` highest probabilities."""
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, np.newaxis], axis=1)))


def identification_metrics(probabilities: np.ndarray, labels: np.ndarray, top_k: int) -> dict[str, float]:
    """Closed-set accuracy, macro and weighted F1, and top-k accuracy."""
    predictions = np.argmax(probabilities, axis=1)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1_macro": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(labels, predictions, average="weighted", zero_division=0)),
        f"top{top_k}_accuracy": top_k_accuracy(probabilities, labels, top_k),
    }


def per_class_report(
    probabilities: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]
) -> list[dict[str, object]]:
    """Precision, recall, F1 and support of every class, in class order."""
    predictions = np.argmax(probabilities, axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=np.arange(len(classes)), zero_division=0
    )
    return [
        {"writer": writer, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for writer, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    ]


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, class_count: int) -> np.ndarray:
    """Confusion matrix (rows: true class, columns: predicted), counts."""
    matrix = np.zeros((class_count, class_count), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def false_rates(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FRR, FAR) when claims scoring at least `threshold` are accepted."""
    frr = float(np.mean(genuine < threshold)) if len(genuine) else float("nan")
    far = float(np.mean(impostor >= threshold)) if len(impostor) else float("nan")
    return frr, far


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> ErrorRates:
    """EER, its threshold and the ROC AUC, from scikit-learn's ROC (thresholds are the scores).

    The EER is where FRR and FAR cross; between two candidate thresholds the one with the
    smaller |FRR - FAR| wins (the lowest such threshold on a tie) and the EER is the mean of the
    two rates there.
    """
    if not len(genuine) or not len(impostor):
        return ErrorRates(float("nan"), float("nan"), float("nan"))
    scores = np.concatenate([genuine, impostor]).astype(np.float64)
    truth = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    far, true_accept, thresholds = roc_curve(truth, scores, drop_intermediate=False)
    frr = 1.0 - true_accept
    gap = np.abs(frr - far)
    # Rates are ratios of counts: gaps within rounding are ties, and thresholds fall along the curve.
    best = int(np.flatnonzero(gap <= gap.min() + RATE_TOLERANCE)[-1])
    return ErrorRates(float((frr[best] + far[best]) / 2), float(thresholds[best]), float(roc_auc_score(truth, scores)))


def threshold_for_far(impostor: np.ndarray, target_far: float) -> float:
    """The lowest threshold whose FAR on `impostor` scores is at most `target_far`."""
    if not len(impostor):
        raise ValueError("no impostor scores to set a threshold on")
    ordered = np.sort(impostor)[::-1]
    # The tolerance keeps a whole count whole: 0.29 * 100 is 28.999999999999996 in floating point.
    allowed = int(np.floor(target_far * len(ordered) + RATE_TOLERANCE * len(ordered)))
    if allowed >= len(ordered):
        return float(ordered[-1])
    # Accept strictly above the (allowed + 1)-th highest impostor score.
    return float(np.nextafter(ordered[allowed], np.inf))


def confidence_bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    """The equal-width bin of [0, 1] each confidence falls in (the right edge inclusive)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE of answers given with `confidence`, `correct` saying which were right: the
    count-weighted mean gap between accuracy and mean confidence in equal-width bins (Guo et al., 2017)."""
    correct = np.asarray(correct, dtype=np.float64)
    if not len(correct):
        return float("nan")
    bin_index = confidence_bins(confidence, bins)
    error = 0.0
    for index in range(bins):
        members = bin_index == index
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def reliability_table(
    confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> dict[str, list[float]]:
    """Per-bin mean confidence, accuracy and count of answers, for a reliability diagram."""
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    bin_index = confidence_bins(confidence, bins)
    table: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": [], "centre": []}
    for index in range(bins):
        members = bin_index == index
        table["centre"].append(float((edges[index] + edges[index + 1]) / 2))
        table["count"].append(float(members.sum()))
        table["confidence"].append(float(confidence[members].mean()) if members.any() else float("nan"))
        table["accuracy"].append(float(correct[members].mean()) if members.any() else float("nan"))
    return table


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE of the top-1 probability of a class-probability matrix (Guo et al., 2017)."""
    return calibration_error(probabilities.max(axis=1), np.argmax(probabilities, axis=1) == labels, bins)


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
) -> dict[str, list[float]]:
    """`reliability_table` of the top-1 probability of a class-probability matrix."""
    return reliability_table(probabilities.max(axis=1), np.argmax(probabilities, axis=1) == labels, bins)

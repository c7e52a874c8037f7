"""The field's metrics, on arrays: identification (accuracy, F1, top-k) and verification (FAR,
FRR, ROC AUC, EER), plus calibration error. Pure NumPy / scikit-learn, no model in sight; scikit-learn
(about a second to import) only inside the functions that use it, so what needs only the verification
rates (an enrolment's champion rule) does not load it.

Verification convention: a score is the probability the classifier gives the *claimed* writer;
a claim is accepted when its score is at or above the threshold. FRR is the share of genuine
claims rejected; FAR the share of impostor claims (forgeries, opposite hand, other writers)
accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    from sklearn.metrics import accuracy_score, f1_score

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
    from sklearn.metrics import precision_recall_fscore_support

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


def error_curve(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FRR, FAR and the threshold at each distinct score, highest first, after +inf (nothing accepted):
    scikit-learn's `roc_curve(drop_intermediate=False)` (FAR = its FPR, FRR = 1 - its TPR), computed as it
    computes it, in NumPy alone (tests/unit/test_metrics.py compares the two to the last bit). The partition
    reports take an EER per writer and partition, thousands per stage on CEDAR, and scikit-learn's input
    checks cost milliseconds each."""
    scores = np.concatenate([genuine, impostor]).astype(np.float64)
    truth = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    descending = np.argsort(scores, kind="mergesort")[::-1]
    scores, truth = scores[descending], truth[descending]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(scores)), truth.size - 1]
    true_accepts = np.r_[0, np.cumsum(truth)[last_of_each_score]]
    false_accepts = np.r_[0, 1 + last_of_each_score - true_accepts[1:]]
    thresholds = np.r_[np.inf, scores[last_of_each_score]]
    return 1.0 - true_accepts / true_accepts[-1], false_accepts / false_accepts[-1], thresholds


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray, with_auc: bool = True) -> ErrorRates:
    """EER, its threshold and the ROC AUC (scikit-learn's; NaN when `with_auc` is False), on the ROC whose
    thresholds are the scores (`error_curve`).

    The EER is where FRR and FAR cross; between two candidate thresholds the one with the
    smaller |FRR - FAR| wins (the lowest such threshold on a tie) and the EER is the mean of the
    two rates there.
    """
    if not len(genuine) or not len(impostor):
        return ErrorRates(float("nan"), float("nan"), float("nan"))
    frr, far, thresholds = error_curve(genuine, impostor)
    gap = np.abs(frr - far)
    # Rates are ratios of counts: gaps within rounding are ties, and thresholds fall along the curve.
    best = int(np.flatnonzero(gap <= gap.min() + RATE_TOLERANCE)[-1])
    auc = float("nan")
    if with_auc:
        from sklearn.metrics import roc_auc_score

        scores = np.concatenate([genuine, impostor]).astype(np.float64)
        auc = float(roc_auc_score(np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))]), scores))
    return ErrorRates(float((frr[best] + far[best]) / 2), float(thresholds[best]), auc)


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

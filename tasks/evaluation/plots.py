"""Plots written as PNG files (DVC shows images offline; MLflow logs them as artifacts)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

PNG_METADATA = {"Software": None}
FIGURE_DPI = 100
MAX_TICK_LABELS = 40
DET_CLIP = 1e-4
HISTOGRAM_BINS = 40


def learning_curve(history: dict[str, list[float]], best_epoch: int, path: Path) -> None:
    """Loss and accuracy per epoch, train against validation, the kept (best) epoch marked."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, title in ((axes[0], "loss", "Cross-entropy loss"), (axes[1], "accuracy", "Accuracy")):
        # A closed-form head (model.head: ridge) records accuracy only, as one epoch.
        for name, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = history.get(name, [])
            axis.plot(range(1, len(values) + 1), values, marker="o", label=label)
        if best_epoch >= 0:
            axis.axvline(best_epoch + 1, color="grey", linestyle="--", label=f"kept: epoch {best_epoch + 1}")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    save(figure, path)


def pyplot():  # -> matplotlib.pyplot
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: Path) -> None:  # figure: matplotlib.figure.Figure
    """Write a figure as PNG without a timestamp, and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=FIGURE_DPI, metadata=PNG_METADATA)
    pyplot().close(figure)


def confusion_matrix_image(matrix: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix, classes in id order, no per-cell text (readable at 115 writers)."""
    plt = pyplot()
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros_like(matrix, dtype=np.float64), where=totals > 0)
    side = min(12.0, 4.0 + len(classes) * 0.07)
    figure, axis = plt.subplots(figsize=(side + 1.5, side))
    image = axis.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    step = max(1, len(classes) // MAX_TICK_LABELS)
    ticks = np.arange(0, len(classes), step)
    labels = [classes[int(index)] for index in ticks]
    axis.set_xticks(ticks, labels, rotation=90, fontsize=7)
    axis.set_yticks(ticks, labels, fontsize=7)
    axis.set_xlabel("predicted writer")
    axis.set_ylabel("true writer")
    axis.set_title(f"Confusion matrix, test genuine ({int(matrix.sum())} images), row-normalised")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    save(figure, path)


def roc_det_image(scores: dict[str, np.ndarray], path: Path) -> None:
    """ROC (FAR against 1 - FRR) and DET (FRR against FAR, normal-deviate axes) per impostor kind."""
    from scipy.stats import norm
    from sklearn.metrics import roc_curve

    plt = pyplot()
    figure, (roc_axis, det_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    genuine = scores["genuine"]
    for kind, impostor in scores.items():
        if kind == "genuine" or not len(impostor) or not len(genuine):
            continue
        truth = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
        far, true_accept, _ = roc_curve(truth, np.concatenate([genuine, impostor]))
        frr = 1.0 - true_accept
        roc_axis.plot(far, true_accept, label=kind)
        clipped = lambda rate: norm.ppf(np.clip(rate, DET_CLIP, 1 - DET_CLIP))  # noqa: E731
        det_axis.plot(clipped(far), clipped(frr), label=kind)
    roc_axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc_axis.set(xlabel="FAR", ylabel="1 - FRR", title="ROC, test (claimed-writer probability)")
    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 0.8])
    det_axis.set_xticks(norm.ppf(ticks), [f"{tick:g}" for tick in ticks])
    det_axis.set_yticks(norm.ppf(ticks), [f"{tick:g}" for tick in ticks])
    det_axis.plot(norm.ppf(ticks), norm.ppf(ticks), color="grey", linestyle=":", label="EER line")
    det_axis.set(xlabel="FAR", ylabel="FRR", title="DET, test")
    for axis in (roc_axis, det_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    save(figure, path)


def histogram_edges(scores: dict[str, np.ndarray]) -> np.ndarray:
    """HISTOGRAM_BINS equal bins from the lowest to the highest score of every kind (verifier scores
    are decision values, not probabilities in [0, 1])."""
    present = [values for values in scores.values() if len(values)]
    low, high = (float(min(map(np.min, present))), float(max(map(np.max, present)))) if present else (0.0, 1.0)
    return np.linspace(low, high if high > low else low + 1.0, HISTOGRAM_BINS + 1)


def score_distributions_image(scores: dict[str, np.ndarray], path: Path) -> None:
    """Histograms of the claimed writer's verification score: genuine against each impostor kind."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.5))
    bins = histogram_edges(scores)
    for kind, values in scores.items():
        if len(values):
            axis.hist(values, bins=bins, density=True, histtype="step", linewidth=1.5, label=f"{kind} ({len(values)})")
    axis.set_yscale("log")
    axis.set(xlabel="verifier score of the claimed writer", ylabel="density (log)", title="Score distributions, test")
    axis.legend()
    axis.grid(alpha=0.3)
    save(figure, path)


def reliability_image(table: dict[str, list[float]], error: float, path: Path) -> None:
    """Reliability diagram of the answers' confidence on test genuine: accuracy against confidence per
    bin, with the diagonal of perfect calibration and each bin's count."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    centres = np.array(table["centre"])
    accuracy = np.nan_to_num(np.array(table["accuracy"]))
    axis.bar(centres, accuracy, width=1.0 / len(centres), edgecolor="black", alpha=0.7, label="accuracy")
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    for centre, height, count in zip(centres, accuracy, table["count"], strict=True):
        if count:
            axis.annotate(f"{int(count)}", (centre, height), ha="center", va="bottom", fontsize=7)
    axis.set(
        xlabel="confidence printed with the answer",
        ylabel="share of answers right",
        title=f"Reliability, test genuine (ECE {error:.3f})",
        xlim=(0, 1),
        ylim=(0, 1.05),
    )
    axis.legend(loc="upper left")
    save(figure, path)

"""Plots written as PNG files (DVC shows images offline; MLflow logs them as artifacts)."""

from __future__ import annotations

from pathlib import Path

PNG_METADATA = {"Software": None}
FIGURE_DPI = 100


def learning_curve(history: dict[str, list[float]], best_epoch: int, path: Path) -> None:
    """Loss and accuracy per epoch, train against validation, the kept (best) epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(1, len(history.get("loss", [])) + 1))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, title in ((axes[0], "loss", "Cross-entropy loss"), (axes[1], "accuracy", "Accuracy")):
        axis.plot(epochs, history.get(metric, []), marker="o", label="train")
        axis.plot(epochs, history.get(f"val_{metric}", []), marker="o", label="validation")
        if best_epoch >= 0:
            axis.axvline(best_epoch + 1, color="grey", linestyle="--", label=f"kept: epoch {best_epoch + 1}")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=FIGURE_DPI, metadata=PNG_METADATA)
    plt.close(figure)

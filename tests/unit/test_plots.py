"""The plots draw what the stages hand them: a closed-form head's one-epoch history, verifier scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.evaluation.plots import histogram_edges, learning_curve, score_distributions_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_learning_curve_of_a_closed_form_head_records_one_epoch_of_accuracy(tmp_path: Path) -> None:
    path = tmp_path / "curve.png"
    learning_curve({"accuracy": [0.99], "val_accuracy": [0.97]}, 0, path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_score_distributions_cover_scores_outside_zero_one(tmp_path: Path) -> None:
    """Verifier scores are decision values (here -2 to 1.5), not probabilities: none may fall outside the bins."""
    from matplotlib import pyplot

    path = tmp_path / "scores.png"
    scores = {"genuine": np.array([0.8, 1.5]), "skilled": np.array([-0.2, 0.1]), "random": np.array([-2.0, -1.0])}
    edges = histogram_edges(scores)
    assert edges[0] == -2.0 and edges[-1] == 1.5
    assert histogram_edges({"genuine": np.array([0.3, 0.3])})[-1] > 0.3  # one value still gets a bin
    score_distributions_image(scores, path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert not pyplot.get_fignums()  # the figure was closed

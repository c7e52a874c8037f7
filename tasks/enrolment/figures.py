"""The validation figures an enrolment is judged on, and the champion rule.

The writers already enrolled must keep their validation figures: identification accuracy on their
validation genuine images (the new model's top writer among all its writers), and the FRR of those
images claimed as their own writer at the calibrated threshold. They are compared with the same
record re-solved without the change (what the parent version was built from), so no version is
downloaded. The new version becomes champion only when accuracy drops by at most `enrol.tolerance`
and FRR rises by at most as much; otherwise it is a challenger and the reason names the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.evaluation.evaluate import score_embeddings, selection_metrics
from tasks.evaluation.scores import ScoreTable, claimed_scores
from tasks.model.head import head_from_verifier
from tasks.model.verifier import WriterVerifier
from tasks.registration.registry import CHALLENGER, CHAMPION
from tasks.workspace.paths import ProjectPaths

VALIDATION = "val"


@dataclass(frozen=True)
class WriterFigures:
    """Validation figures of a set of writers under one model."""

    accuracy: float
    frr: float
    images: int


def score_table(
    paths: ProjectPaths, rows: Sequence[dict[str, str]], verifier: WriterVerifier, classes: Sequence[str]
) -> ScoreTable:
    """Every validation, calibration, test and unenrolled image of `rows` scored by `verifier` (its head)."""
    return score_embeddings(head_from_verifier(verifier), verifier, rows, paths.embeddings_dir, classes)


def writer_figures(
    table: ScoreTable, classes: Sequence[str], writers: Sequence[str], threshold: float
) -> WriterFigures:
    """Accuracy and FRR of the validation genuine images of `writers` in `table` (scored over `classes`)."""
    genuine = table.select(VALIDATION, "genuine")
    chosen = np.isin(genuine.claimed, [classes.index(writer) for writer in writers if writer in classes])
    rows = genuine.rows(chosen)
    if not len(rows):
        return WriterFigures(float("nan"), float("nan"), 0)
    accuracy = float(np.mean(np.argmax(rows.logits, axis=1) == rows.claimed))
    frr = float(np.mean(claimed_scores(rows.verification.astype(np.float64), rows.claimed) < threshold))
    return WriterFigures(accuracy, frr, len(rows))


def champion_rule(before: WriterFigures, after: WriterFigures, tolerance: float) -> tuple[str, str]:
    """The alias for the new version and why, from the enrolled writers' figures before and after."""
    figures = (
        f"the {after.images} validation images of the writers enrolled before: accuracy {before.accuracy:.3f} -> "
        f"{after.accuracy:.3f}, FRR {before.frr:.3f} -> {after.frr:.3f}"
    )
    if not after.images:
        return CHAMPION, "no validation image of the writers enrolled before to compare on"
    drop, rise = before.accuracy - after.accuracy, after.frr - before.frr
    if drop > tolerance:
        return CHALLENGER, f"{figures}: accuracy drops by {drop:.3f}, more than enrol.tolerance={tolerance}"
    if rise > tolerance:
        return CHALLENGER, f"{figures}: FRR rises by {rise:.3f}, more than enrol.tolerance={tolerance}"
    return CHAMPION, f"{figures}: within enrol.tolerance={tolerance}"


def selection_tags(table: ScoreTable) -> dict[str, float]:
    """The selection metrics register compares versions on (validation and calibration, never test)."""
    return selection_metrics(table)

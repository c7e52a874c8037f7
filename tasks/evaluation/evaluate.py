"""The `evaluate` stage's core: score every held-out image once, then the field's metrics on test.

Identification is measured on the test genuine signatures only. Verification scores the claim
"W signed this" with the writer-dependent verifier (`tasks.model.verifier`) and compares W's test
genuine signatures with its skilled forgeries, simple forgeries, opposite-hand samples, and
other writers' test genuine signatures (random forgeries); the classifier's softmax probability
of W, the baseline, is measured the same way beside it. The EERs here are chosen on the test
scores themselves, so they are labelled a posteriori; thresholds fitted on calibration data
come from the `calibrate` stage.

Test numbers are reported, never chosen by: the champion decision (`tasks.registration.registry`) compares
the `selection_*` metrics, measured on the validation genuine images and the calibration split's
forgeries, which neither training's fit nor the test report touch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np

from tasks.evaluation.metrics import (
    confusion_counts,
    equal_error_rate,
    false_rates,
    identification_metrics,
    per_class_report,
)
from tasks.evaluation.partitions import A_POSTERIORI_FIGURES, a_posteriori_report, flat_intervals, per_writer_eer
from tasks.evaluation.scores import (
    IMPOSTOR_KINDS,
    NO_CLASS,
    SOFTMAX,
    UNENROLLED_SPLIT,
    VERIFIER,
    ScoreTable,
    claimed_scores,
    selection_claims,
    softmax,
    verification_scores,
)
from tasks.model.head import HeadWeights
from tasks.model.verifier import WriterVerifier
from tasks.training.embedding_files import load_split_embeddings
from tasks.workspace.errors import EvaluationError

SCORED_SPLITS = ("val", "test", "calibration", UNENROLLED_SPLIT)
A_POSTERIORI = "_a_posteriori"  # the suffix of every figure whose threshold is chosen on the test scores
SELECTION_PREFIX = "selection_"
VERIFICATION_KINDS = (*IMPOSTOR_KINDS, "random")


def score_embeddings(
    head: HeadWeights,
    verifier: WriterVerifier,
    rows: Sequence[dict[str, str]],
    embeddings_dir: Path,
    classes: Sequence[str],
) -> ScoreTable:
    """Logits, verifier scores and embeddings of every val, test, calibration and unenrolled image,
    with its split, kind and claimed writer, from the embed stage's files (no image is read again)."""
    if verifier.writer_count != len(classes) or head.class_count != len(classes):
        raise EvaluationError(
            f"the verifier knows {verifier.writer_count} writers, the head {head.class_count}, the labels "
            f"{len(classes)}: they come from different trainings. Rerun the train stage (`dvc repro train`)."
        )
    index = {writer: position for position, writer in enumerate(classes)}
    chosen = [row for row in rows if row["split"] in SCORED_SPLITS]
    embeddings = np.zeros((0, verifier.mean.shape[0]), dtype=np.float32)
    parts = {split: [row for row in chosen if row["split"] == split] for split in SCORED_SPLITS}
    by_path: dict[str, np.ndarray] = {}
    for split, wanted in parts.items():
        embedded = load_split_embeddings(embeddings_dir, split, wanted)
        by_path.update(zip(embedded.paths, embedded.clean, strict=True))
    if chosen:
        embeddings = np.stack([by_path[row["path"]] for row in chosen]).astype(np.float32)
    return ScoreTable(
        logits=head.logits(embeddings).reshape(len(chosen), len(classes)),
        verification=verifier.scores(embeddings).reshape(len(chosen), len(classes)),
        embeddings=embeddings,
        claimed=np.array([index.get(row["writer"], NO_CLASS) for row in chosen], dtype=np.int64),
        kinds=np.array([row["kind"] for row in chosen]),
        splits=np.array([row["split"] for row in chosen]),
        paths=np.array([row["path"] for row in chosen]),
    )


def verification_report(table: ScoreTable, source: str = VERIFIER) -> dict[str, object]:
    """EER and AUC per impostor kind (a posteriori), and every kind's FAR at the skilled-EER threshold,
    for the claim scores of `source` (the verifier's, or the softmax baseline's).

    A kind with no samples gets NaN, which the JSON writer turns into null.
    """
    scores = verification_scores(table, "test", source)
    report: dict[str, object] = {
        "score": source,
        "threshold_source": "test scores (a posteriori)",
        "genuine_claims": len(scores["genuine"]),
    }
    for kind in VERIFICATION_KINDS:
        rates = equal_error_rate(scores["genuine"], scores[kind])
        report[kind] = {
            "claims": len(scores[kind]),
            "eer": rates.eer,
            "eer_threshold": rates.threshold,
            "auc": rates.auc,
        }
    skilled_threshold = kind_figure(report, "skilled", "eer_threshold")
    if not math.isnan(skilled_threshold):
        at_threshold: dict[str, float] = {"threshold": skilled_threshold}
        for kind in VERIFICATION_KINDS:
            at_threshold["frr"], at_threshold[f"far_{kind}"] = false_rates(
                scores["genuine"], scores[kind], skilled_threshold
            )
        report["at_skilled_eer_threshold"] = at_threshold
    return report


def kind_figure(report: Mapping[str, object], kind: str, figure: str) -> float:
    """One figure (`eer`, `auc`, ...) of an impostor kind in a `verification_report`."""
    return cast(Mapping[str, float], report[kind])[figure]


def selection_metrics(table: ScoreTable) -> dict[str, float]:
    """What versions are compared on, without test: identification accuracy on the validation
    genuine images, and the verifier's EER of validation genuine claims against the calibration
    split's skilled forgeries. An empty side gives NaN, which never wins a comparison."""
    genuine = table.select("val", "genuine")
    accuracy = float(np.mean(np.argmax(genuine.logits, axis=1) == genuine.claimed)) if len(genuine) else math.nan
    genuine_scores, impostor_scores = selection_claims(table, VERIFIER)
    return {
        f"{SELECTION_PREFIX}accuracy": accuracy,
        f"{SELECTION_PREFIX}eer_skilled": equal_error_rate(genuine_scores, impostor_scores, with_auc=False).eer,
        f"{SELECTION_PREFIX}genuine_claims": len(genuine_scores),
        f"{SELECTION_PREFIX}impostor_claims": len(impostor_scores),
    }


def skilled_per_writer_eer(table: ScoreTable) -> float:
    """The per-writer-threshold skilled EER on test (a posteriori): the mean of each writer's own EER."""
    genuine, skilled = table.select("test", "genuine"), table.select("test", "skilled")
    return per_writer_eer(
        claimed_scores(genuine.verification.astype(np.float64), genuine.claimed),
        genuine.claimed,
        claimed_scores(skilled.verification.astype(np.float64), skilled.claimed),
        skilled.claimed,
    )


def evaluation_report(
    table: ScoreTable,
    classes: Sequence[str],
    top_k: int,
    partitions: int = 0,
    calibration_fraction: float = 0.5,
    partition_seed: int = 0,
) -> tuple[dict[str, object], list, np.ndarray]:
    """Metrics for `metrics/evaluate_details.json` (the headline ones also go to `metrics/evaluate.json`),
    the per-writer rows, and the confusion matrix (counts)."""
    genuine = table.select("test", "genuine")
    if not len(genuine):
        raise EvaluationError("no test genuine signatures to evaluate on: set prepare.test_per_writer above 0")
    probabilities = softmax(genuine.logits)
    identification = identification_metrics(probabilities, genuine.claimed, top_k)
    verification = verification_report(table, VERIFIER)
    baseline = verification_report(table, SOFTMAX)
    metrics: dict[str, object] = {
        **identification,
        f"eer_skilled{A_POSTERIORI}": kind_figure(verification, "skilled", "eer"),
        f"eer_skilled_per_writer{A_POSTERIORI}": skilled_per_writer_eer(table),
        "test_genuine_images": len(genuine),
        "writers": len(classes),
        "unenrolled_images": int(np.sum(table.splits == UNENROLLED_SPLIT)),
    }
    for kind in VERIFICATION_KINDS:
        metrics[f"eer_{kind}{A_POSTERIORI}"] = kind_figure(verification, kind, "eer")
        metrics[f"auc_{kind}"] = kind_figure(verification, kind, "auc")
        metrics[f"softmax_eer_{kind}{A_POSTERIORI}"] = kind_figure(baseline, kind, "eer")
    if partitions:
        writer_partitions = a_posteriori_report(table, calibration_fraction, partitions, partition_seed)
        metrics["partitions"] = writer_partitions
        metrics.update(flat_intervals(writer_partitions, A_POSTERIORI_FIGURES))
    metrics.update(
        {
            "verification_a_posteriori": verification,
            "softmax_verification_a_posteriori": baseline,
            **selection_metrics(table),
        }
    )
    matrix = confusion_counts(genuine.claimed, np.argmax(probabilities, axis=1), len(classes))
    return metrics, per_class_report(probabilities, genuine.claimed, tuple(classes)), matrix

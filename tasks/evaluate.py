"""The `evaluate` stage's core: score every held-out image once, then the field's metrics on test.

Identification is measured on the test genuine signatures only. Verification takes the
probability of the claimed writer as the score and compares that writer's test genuine
signatures with its skilled forgeries, simple forgeries, opposite-hand samples, and other
writers' test genuine signatures (random forgeries). The EERs here are chosen on the test
scores themselves, so they are labelled a posteriori; thresholds fitted on calibration data
come from the `calibrate` stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tasks.errors import EvaluationError
from tasks.metrics import (
    confusion_counts,
    equal_error_rate,
    false_rates,
    identification_metrics,
    per_class_report,
)
from tasks.model import LogitScorer
from tasks.scores import IMPOSTOR_KINDS, NO_CLASS, ScoreTable, softmax, verification_scores
from tasks.train import prefetched, to_model_input

SCORED_SPLITS = ("val", "test", "calibration")
VERIFICATION_KINDS = (*IMPOSTOR_KINDS, "random")


def read_model_input(path: tf.Tensor) -> tf.Tensor:
    """A preprocessed grey PNG as the classifier's float RGB input in [0, 255]."""
    return to_model_input(tf.io.decode_png(tf.io.read_file(path), channels=1))


def logits_of(classifier: keras.Model, image_paths: Sequence[str], batch_size: int) -> np.ndarray:
    """Pre-softmax outputs of the classifier for image files, streamed in batches."""
    dataset = tf.data.Dataset.from_tensor_slices(list(image_paths)).map(
        read_model_input, num_parallel_calls=tf.data.AUTOTUNE
    )
    return LogitScorer(classifier)(prefetched(dataset.batch(batch_size))).astype(np.float32)


def score_manifest(
    classifier: keras.Model, rows: Sequence[dict[str, str]], root: Path, classes: Sequence[str], batch_size: int
) -> ScoreTable:
    """Logits of every val, test and calibration image, with its split, kind and claimed writer."""
    index = {writer: position for position, writer in enumerate(classes)}
    chosen = [row for row in rows if row["split"] in SCORED_SPLITS]
    logits = logits_of(classifier, [str(root / row["prepared_path"]) for row in chosen], batch_size)
    return ScoreTable(
        logits=logits.reshape(len(chosen), len(classes)),
        claimed=np.array([index.get(row["writer"], NO_CLASS) for row in chosen], dtype=np.int64),
        kinds=np.array([row["kind"] for row in chosen]),
        splits=np.array([row["split"] for row in chosen]),
        paths=np.array([row["path"] for row in chosen]),
    )


def verification_report(table: ScoreTable) -> dict[str, object]:
    """EER and AUC per impostor kind (a posteriori), and every kind's FAR at the skilled-EER threshold.

    A kind with no samples gets NaN, which the JSON writer turns into null.
    """
    scores = verification_scores(table, "test")
    report: dict[str, object] = {
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
    skilled_threshold = report["skilled"]["eer_threshold"]
    if not math.isnan(skilled_threshold):
        at_threshold: dict[str, float] = {"threshold": skilled_threshold}
        for kind in VERIFICATION_KINDS:
            at_threshold["frr"], at_threshold[f"far_{kind}"] = false_rates(
                scores["genuine"], scores[kind], skilled_threshold
            )
        report["at_skilled_eer_threshold"] = at_threshold
    return report


def evaluation_report(
    table: ScoreTable, classes: Sequence[str], top_k: int
) -> tuple[dict[str, object], list, np.ndarray]:
    """Metrics for `metrics/evaluate.json`, the per-writer rows, and the confusion matrix (counts)."""
    genuine = table.select("test", "genuine")
    if not len(genuine):
        raise EvaluationError("no test genuine signatures to evaluate on: set prepare.test_per_writer above 0")
    probabilities = softmax(genuine.logits)
    identification = identification_metrics(probabilities, genuine.claimed, top_k)
    verification = verification_report(table)
    metrics: dict[str, object] = {
        **identification,
        "test_genuine_images": len(genuine),
        "writers": len(classes),
        "verification_a_posteriori": verification,
    }
    for kind in VERIFICATION_KINDS:
        metrics[f"eer_{kind}"] = verification[kind]["eer"]
        metrics[f"auc_{kind}"] = verification[kind]["auc"]
    matrix = confusion_counts(genuine.claimed, np.argmax(probabilities, axis=1), len(classes))
    return metrics, per_class_report(probabilities, genuine.claimed, tuple(classes)), matrix

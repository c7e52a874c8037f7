"""The TensorFlow part of an enrolment: the checked base embeds the new references, and the classifier
with the re-solved head is packaged and checked against the verifier's scores.

The base is built once and checked against the embed stage's weights digest (metrics/embed.json): the
new references' embeddings must come from the base that embedded every stored image. Their augmented
views are seeded as the embed stage seeds every training image's (`train.seed`, the stored views'
epochs, the image's prepared-PNG hash: `tasks.training.input_pipeline.image_keys`), so the next
`dvc repro` gives them the same views.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.model.embedding_spec import EmbeddingSpec
from tasks.workspace.errors import EnrolmentError
from tasks.workspace.paths import ProjectPaths

REFERENCES_LABEL = "references"


@dataclass(frozen=True)
class EmbedInfo:
    """What the embed stage recorded: the images' side, the base's weights digest, the embedding taken from it."""

    image_size: int
    base_digest: str
    views: int
    embedding: EmbeddingSpec


def embed_info(paths: ProjectPaths) -> EmbedInfo:
    """metrics/embed.json, or an error naming `dvc repro` when the embed stage has not run."""
    try:
        content = json.loads(paths.embed_metrics_file.read_text())
        recorded = content["embedding"]
        return EmbedInfo(
            int(content["image_size"]),
            str(content["base_weights_sha256"]),
            int(content["views"]),
            EmbeddingSpec.from_dict(recorded),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EnrolmentError(
            f"{paths.embed_metrics_file} cannot be read ({error}): run the pipeline (`dvc repro`) first"
        ) from error


def checked_base(root: Path, info: EmbedInfo, weights: str, seed: int, embedding: EmbeddingSpec):  # -> keras.Model
    """The base of `model.weights`, refused (naming `dvc repro`) unless it, and the `embedding` params.yaml
    describes, are the embed stage's."""
    from tasks.registration.assemble import check_embedding
    from tasks.registration.assemble import checked_base as base_with_digest
    from tasks.workspace.errors import ModelFileError

    try:  # the base comes from `tasks.model.classifier.frozen_base`, which clears Keras's session first
        check_embedding(info.embedding.as_dict(), embedding)
        return base_with_digest(root, info.image_size, weights, seed, info.base_digest)
    except ModelFileError as error:
        raise EnrolmentError(str(error)) from error


def embed_references(
    base,
    info: EmbedInfo,
    images: np.ndarray,
    prepared_hashes: tuple[str, ...],
    augment,
    views: int,
    seed: int,
    batch_size: int,
) -> np.ndarray:
    """(1 + views, n, features): the preprocessed references (n, size, size) as they are, then augmented, each
    view seeded by the reference's prepared-PNG hash as the embed stage seeds every training image's."""
    from tasks.model.fused import folded_inference_function
    from tasks.training.embed import feature_embedder, split_views
    from tasks.training.input_pipeline import SplitImages

    step = folded_inference_function(feature_embedder(base, info.image_size, info.embedding))
    split = SplitImages(images[..., np.newaxis], np.zeros(len(images), dtype=np.int32), prepared_hashes)
    return split_views(step, split, augment, views, seed, batch_size, REFERENCES_LABEL, False)


def packaged_classifier(base, info: EmbedInfo, head, dropout: float, seed: int):  # -> keras.Model
    """The float32 classifier users load: the checked base and the re-solved head."""
    from tasks.registration.assemble import classifier_on_base

    return classifier_on_base(base, info.image_size, head, dropout, seed, info.embedding)


def check_packaged(classifier, verifier, images: np.ndarray, embeddings: np.ndarray) -> float:
    """Score `images` with the packaged classifier and compare its logits and verifier scores with the
    verifier's scores of their stored `embeddings`; returns the largest difference, or raises
    EnrolmentError when it exceeds `tasks.registration.assemble.SCORE_TOLERANCE`."""
    from tasks.model.classifier import LogitScorer
    from tasks.registration.assemble import SCORE_TOLERANCE

    if not len(images):
        return 0.0
    outputs = LogitScorer(classifier).of_grey(images)
    expected = verifier.scores(embeddings)
    difference = float(
        max(np.abs(outputs.logits - expected).max(), np.abs(verifier.scores(outputs.embeddings) - expected).max())
    )
    if difference > SCORE_TOLERANCE:
        raise EnrolmentError(
            f"the packaged model scores the checked images {difference:.2e} away from the verifier "
            f"(tolerance {SCORE_TOLERANCE}): nothing registered. Run `dvc repro`, then try again."
        )
    return difference


def write_model_files(folder: Path, classifier, verifier, calibration: dict[str, object]) -> dict[str, Path]:
    """The packaged model's files in `folder`: classifier.keras, verifier.npz, calibration.json."""
    from tasks.model.keras_files import save_model_file
    from tasks.model.verifier import save_verifier
    from tasks.workspace.files import write_json

    files = {
        "classifier": folder / "classifier.keras",
        "verifier": folder / "verifier.npz",
        "calibration": folder / "calibration.json",
    }
    save_model_file(classifier, files["classifier"])
    save_verifier(verifier, files["verifier"])
    write_json(files["calibration"], calibration)  # as the calibrate stage writes models/calibration.json
    return files

"""The packaged classifier, put together by the `package` stage: the frozen base and the trained head's arrays.

The light stages never build a Keras model: train writes the head as arrays (`tasks.model.head`), evaluate
scores the embed stage's embeddings with NumPy. `package` builds the one model users load (base,
preprocessing, head, float32) and checks, before `register` may log it, that it gives the scores the
light stages computed on a few validation images (`SCORE_TOLERANCE`), that its base is the one that
embedded them, and that the serving code answers a raw image file with it as evaluate scored that
image (`check_serving_path`): a registered model answers as its calibration was measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.evaluation.scores import ScoreTable
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.model.head import HeadWeights
from tasks.model.verifier import WriterVerifier
from tasks.training.input_pipeline import read_grey_image
from tasks.workspace.errors import ModelFileError

if TYPE_CHECKING:
    from tasks.model.classifier import LogitScorer

CHECKED_IMAGES = 8  # validation images the packaged model scores again before it is registered
# Largest difference allowed between the packaged model's scores and the light stages' (logits and
# verifier scores are of order 1; the two differ only by float32 summation order, about 1e-5).
SCORE_TOLERANCE = 1e-3
REEMBED_HINT = (
    "Embed again with the base model.weights gives now (`dvc repro --force embed`: DVC does not see a "
    "weights file replaced under the same name), then `dvc repro`."
)


def assemble_classifier(
    root: Path,
    image_size: int,
    weights: str,
    seed: int,
    head: HeadWeights,
    dropout: float,
    embedded: dict[str, object],
    embedding: EmbeddingSpec,
):  # -> keras.Model
    """The float32 classifier of `head` on the base built from `weights` (and `seed` for `weights: none`),
    refused when that base, or the `embedding` taken from it, is not what the embed stage recorded
    (`embedded`: metrics/embed.json)."""
    # Keras names unnamed layers from per-process counters: models built earlier in this process (the
    # pipeline flow runs embed here first) would change the names in the saved file, and its hash in
    # dvc.lock. `frozen_base` clears the session, so this builds the same file as a fresh process.
    check_embedding(embedded.get("embedding"), embedding)
    base = checked_base(root, image_size, weights, seed, str(embedded["base_weights_sha256"]))
    return classifier_on_base(base, image_size, head, dropout, seed, embedding)


def check_embedding(recorded: object, embedding: EmbeddingSpec) -> None:
    """Refuse an embedding (`model.ink`, `model.pooled_layers`) other than the one the embed stage recorded
    (`recorded`: its `as_dict` form in metrics/embed.json): a head fitted on one scores nonsense on another."""
    if recorded != embedding.as_dict():
        raise ModelFileError(
            f"model.ink / model.pooled_layers describe the embedding {embedding.as_dict()}, but the stored "
            f"embeddings are {recorded}. Run `dvc repro` so that the embed stage embeds the images again."
        )


def checked_base(root: Path, image_size: int, weights: str, seed: int, base_digest: str):  # -> keras.Model
    """The frozen base built from `weights` (and `seed`), refused when its weights digest is not `base_digest`
    (the embed stage's, in metrics/embed.json): embeddings of another base would not fit the stored ones."""
    from tasks.model.classifier import frozen_base, weights_digest

    base = frozen_base(image_size, weights, root, seed)
    if weights_digest(base) != base_digest:
        raise ModelFileError(
            f"the base built from model.weights '{weights}' is not the one that computed the embeddings "
            f"(digest {base_digest[:12]}). {REEMBED_HINT}"
        )
    return base


def classifier_on_base(
    base, image_size: int, head: HeadWeights, dropout: float, seed: int, embedding: EmbeddingSpec
):  # -> keras.Model
    """The float32 classifier of `head` on an already built (and checked) `base`."""
    from tasks.model.classifier import classifier_with_head
    from tasks.model.keras_files import float32_copy

    return float32_copy(classifier_with_head(base, image_size, head, dropout, seed, embedding))


def checked_rows(table: ScoreTable, count: int) -> np.ndarray:
    """Indices of the first `count` validation rows of the score table (the images register scores again)."""
    return np.flatnonzero(table.splits == "val")[:count]


def check_scores(
    scorer: LogitScorer, verifier: WriterVerifier, table: ScoreTable, rows: Sequence[dict[str, str]], root: Path
) -> float:
    """Score the first `CHECKED_IMAGES` validation images with the packaged classifier (its `scorer`) and
    compare its logits and verifier scores with the score table's; returns the largest difference, or raises
    ModelFileError naming the image when it exceeds `SCORE_TOLERANCE`."""
    prepared = {row["path"]: root / row["prepared_path"] for row in rows}
    chosen = checked_rows(table, CHECKED_IMAGES)
    if not len(chosen):
        return 0.0
    images = np.stack([read_grey_image(prepared[str(table.paths[index])])[..., 0] for index in chosen])
    outputs = scorer.of_grey(images)
    differences = np.maximum(
        np.abs(outputs.logits - table.logits[chosen]).max(axis=1),
        np.abs(verifier.scores(outputs.embeddings) - table.verification[chosen]).max(axis=1),
    )
    worst = int(np.argmax(differences))
    if differences[worst] > SCORE_TOLERANCE:
        raise ModelFileError(
            f"the packaged model scores {table.paths[chosen[worst]]} {differences[worst]:.2e} away from the "
            f"evaluate stage's scores (tolerance {SCORE_TOLERANCE}): the embeddings, the head and the model "
            f"disagree. {REEMBED_HINT}"
        )
    return float(differences.max())


def check_serving_path(
    scorer: LogitScorer,
    verifier: WriterVerifier,
    table: ScoreTable,
    root: Path,
    classes: Sequence[str],
    settings,  # tasks.data.images.PreprocessSettings
) -> None:
    """Answer the first checked validation image's raw file through the serving code (decoding,
    preprocessing, scoring, answers: `tasks.serving.inference.SignatureClassifier`) with the packaged
    classifier (its `scorer`, the one `check_scores` ran: one traced graph for both), and compare the
    answer with the evaluate stage's scores of that image: the same top writer and its verifier score
    within `SCORE_TOLERANCE`. Raises ModelFileError naming the image."""
    from tasks.serving.inference import SignatureClassifier
    from tasks.serving.model_input import items_from

    chosen = checked_rows(table, 1)
    if not len(chosen):
        return
    index = int(chosen[0])
    image = root / str(table.paths[index])
    # No threshold: every answer names its top writer (the calibrated one is fitted later, by calibrate).
    calibration = {"classes": list(classes), "temperature": 1.0, "threshold": -np.inf, "unknown_class_id": len(classes)}
    (answer,) = SignatureClassifier(scorer, verifier, calibration, settings, top_k=1).answers(items_from([str(image)]))
    top = int(np.argmax(table.logits[index]))
    if (
        answer.error
        or answer.class_id != top
        or abs(answer.verification_score - table.verification[index, top]) > SCORE_TOLERANCE
    ):
        raise ModelFileError(
            f"the serving code answers {image.relative_to(root)} with the packaged model as "
            f"{answer.error or f'writer {answer.writer} (score {answer.verification_score:.4f})'}, but evaluate "
            f"scored it writer {classes[top]} ({table.verification[index, top]:.4f}): the serving code and the "
            "stages disagree"
        )

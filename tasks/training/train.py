"""Training the classifier's head on the frozen base's embeddings (the `embed` stage's files).

The default head (`model.head: ridge`) is the writer-dependent verifier itself (`tasks.model.verifier`),
solved in closed form: this module, NumPy only, no TensorFlow. The trained heads (`linear`, `mlp`)
learn with Keras (`tasks.training.train_keras`), in one of two modes:

- `cached`: the head trains on the stored embeddings; every epoch is one shuffled pass over all views.
- `online` (the reference behaviour): every step augments fresh images and runs the frozen base.

In every case the verifier is fitted on the stored training views. The head is returned as arrays
(`tasks.model.head`), which evaluate applies with NumPy and register folds into the Keras model it packages.
Test embeddings are never read here: they are for the `evaluate` stage's report only.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.data.manifest import training_rows
from tasks.model.head import HeadWeights, head_from_verifier
from tasks.model.verifier import WriterVerifier, fit_writer_verifier
from tasks.model.verifier_cache import background_by_class, problem_digest, views_by_class
from tasks.training.checkpoint_state import TrainState
from tasks.training.embedding_files import flat_views, load_split_embeddings, prepared_image_size
from tasks.workspace.params_model import AugmentParams, ModelParams, TrainParams
from tasks.workspace.paths import ProjectPaths

RIDGE_HEAD = "ridge"


@dataclass(frozen=True)
class EmbeddedTraining:
    """What the head and the verifier fit on: the writers, the training views (view 0 the clean
    images) and the validation embeddings, with class labels, and the images' side in pixels."""

    classes: tuple[str, ...]
    train_views: np.ndarray  # (views, train images, features)
    train_labels: np.ndarray
    val: np.ndarray  # (val images, features)
    val_labels: np.ndarray
    image_size: int
    train_rows: tuple[dict[str, str], ...]
    val_rows: tuple[dict[str, str], ...]
    train_background: np.ndarray  # per training image: a dataset image (True) or an enrolled reference


@dataclass(frozen=True)
class TrainResult:
    """What a finished training produced."""

    head: HeadWeights
    verifier: WriterVerifier
    classes: tuple[str, ...]
    state: TrainState
    mode: str
    train_seconds: float
    train_images_per_second: float
    resumed_from_epoch: int
    device: str


def load_embedded_training(paths: ProjectPaths, manifest_rows: Sequence[dict[str, str]]) -> EmbeddedTraining:
    """The training and validation embeddings of the manifest's writers, checked against the manifest."""
    classes, by_split = training_rows(manifest_rows)
    index = {writer: position for position, writer in enumerate(classes)}
    train = load_split_embeddings(paths.embeddings_dir, "train", by_split["train"])
    val = load_split_embeddings(paths.embeddings_dir, "val", by_split["val"])
    image_size = prepared_image_size(by_split["train"], paths.root)
    return EmbeddedTraining(
        classes=classes,
        train_views=train.views,
        train_labels=np.array([index[row["writer"]] for row in by_split["train"]], dtype=np.int32),
        val=val.clean,
        val_labels=np.array([index[row["writer"]] for row in by_split["val"]], dtype=np.int32),
        image_size=image_size,
        train_rows=tuple(by_split["train"]),
        val_rows=tuple(by_split["val"]),
        train_background=np.array(
            [not paths.is_enrolled_reference(row["path"]) for row in by_split["train"]], dtype=bool
        ),
    )


def training_fingerprint(model: ModelParams, train: TrainParams, augment: AugmentParams, data_digest: str) -> str:
    """Identity of a training run: a checkpoint resumes only a run with the same inputs."""
    content = {
        "model": model.model_dump(),
        "train": train.model_dump(),
        "augment": augment.model_dump(),
        "data": data_digest,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of `labels` predicted correctly (NaN when there are none)."""
    return float(np.mean(predictions == labels)) if len(labels) else float("nan")


def closed_form_state(
    verifier: WriterVerifier, data: EmbeddedTraining, fingerprint: str, run_id: str | None
) -> TrainState:
    """A closed-form head recorded as one completed epoch (train and validation accuracy of its
    answers), so reports and the learning curve read it like the others."""
    samples, labels = flat_views(data.train_views, data.train_labels)
    state = TrainState(fingerprint=fingerprint, run_id=run_id)
    state.history = {
        "accuracy": [accuracy(np.argmax(verifier.scores(samples), axis=1), labels)],
        "val_accuracy": [accuracy(np.argmax(verifier.scores(data.val), axis=1), data.val_labels)],
    }
    state.completed_epochs, state.best_epoch = 1, 0
    return state


def fit_verifier(data: EmbeddedTraining, model_params: ModelParams) -> WriterVerifier:
    """The writer-dependent verifier on every training view; enrolled references are positives of their
    writer only, never a background row (`tasks.model.verifier`), as when `sigpipe enrol` added them."""
    return fit_writer_verifier(
        *flat_views(data.train_views, data.train_labels),
        len(data.classes),
        model_params.verifier_regularization,
        model_params.verifier_whitening,
        background=np.tile(data.train_background, data.train_views.shape[0]),
    )


def verifier_problem_digest(data: EmbeddedTraining, model_params: ModelParams) -> str:
    """The digest of the problem `fit_verifier` solves, as an enrolment computes it for the same record
    (`tasks.model.verifier_cache`): the train stage's verifier spares the first enrolment a second solve."""
    return problem_digest(
        views_by_class(data.train_views, data.train_labels, data.classes),
        background_by_class(data.train_background, data.train_labels, data.classes),
        model_params.verifier_regularization,
        model_params.verifier_whitening,
    )


def train_classifier(
    paths: ProjectPaths,
    data: EmbeddedTraining,
    model_params: ModelParams,
    train: TrainParams,
    augment: AugmentParams,
    fingerprint: str,
    device: str,
    run_id: str | None = None,
    callbacks: Sequence[Any] = (),
    show_progress: bool = True,
) -> TrainResult:
    """Fit the verifier, then the head: the ridge head in closed form here; a Keras head in
    `train.mode` (`tasks.training.train_keras`, resuming an unfinished run with the same fingerprint)."""
    verifier = fit_verifier(data, model_params)
    if model_params.head != RIDGE_HEAD:
        from tasks.training.train_keras import train_keras_head

        trained = train_keras_head(
            paths, data, model_params, train, augment, fingerprint, run_id, callbacks, show_progress
        )
        return TrainResult(
            trained.head,
            verifier,
            data.classes,
            trained.state,
            train.mode,
            trained.seconds,
            trained.images_per_second,
            trained.resumed_from_epoch,
            device,
        )
    started = time.perf_counter()
    state = closed_form_state(verifier, data, fingerprint, run_id)
    seconds = time.perf_counter() - started
    return TrainResult(
        head=head_from_verifier(verifier),
        verifier=verifier,
        classes=data.classes,
        state=state,
        mode=train.mode,
        train_seconds=seconds,
        train_images_per_second=data.train_views.shape[0] * data.train_views.shape[1] / seconds if seconds else 0.0,
        resumed_from_epoch=0,
        device=device,
    )

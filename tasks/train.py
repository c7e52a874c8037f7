"""Training the classifier's head on a frozen InceptionV3.

The default head (`model.head: ridge`) is the writer-dependent verifier itself (`tasks.verifier`),
solved in closed form on the cached embeddings (`tasks.features`). The trained heads (`linear`,
`mlp`) learn in one of two modes:

- `online` (the reference behaviour): every step augments fresh images and runs the frozen base.
- `cached`: the head trains on the cached embeddings; every epoch is one shuffled pass over all
  the views.

In every case the verifier is fitted on the cached training views (the online mode computes them
once for it). Early stopping watches the validation loss, the best epoch's weights are kept, and
an interrupted run resumes from its last completed epoch (`tasks.checkpoints`). Test images are
never loaded here: they are for the `evaluate` stage's report only.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tasks.checkpoints import (
    LAST_STATE_FILE,
    EpochCheckpoint,
    TrainState,
    best_file_name,
    checkpointed_variables,
    load_variables,
    read_resumable_state,
)
from tasks.config import AugmentParams, ModelParams, TrainParams
from tasks.features import (
    FeatureCache,
    compute_features,
    embedding_code_digest,
    features_key,
    library_versions,
    read_feature_cache,
    write_feature_cache,
)
from tasks.input_pipeline import (
    TrainingData,
    cached_batches,
    flat_views,
    one_hot,
    online_batches,
    plain_batches,
    prefetched,
)
from tasks.model import (
    HeadSpec,
    build_base,
    build_classifier,
    build_embedder,
    build_head,
    build_ridge_classifier,
    copy_head_weights,
    embedding_statistics,
    float32_copy,
)
from tasks.model import weights_digest as model_weights_digest
from tasks.paths import ProjectPaths
from tasks.verifier import WriterVerifier, fit_writer_verifier


@dataclass(frozen=True)
class TrainResult:
    """What a finished training produced."""

    classifier: keras.Model
    verifier: WriterVerifier
    classes: tuple[str, ...]
    state: TrainState
    mode: str
    train_seconds: float
    train_images_per_second: float
    embed_seconds: float
    embed_images_per_second: float
    features_reused: bool
    resumed_from_epoch: int
    device: str


def compile_model(model: keras.Model, train: TrainParams, steps_per_execution: int = 1) -> keras.Model:
    """Keras' Adam and categorical cross-entropy, as in the reference.

    `steps_per_execution` runs that many steps per call into TensorFlow: the same updates, less
    Python between them (a sixth of the time of a cached-mode head step is otherwise overhead).
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=train.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=train.jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def fit_with_resume(
    fresh_model: Callable[[], keras.Model],
    batches_from: Callable[[int], tf.data.Dataset],
    steps_per_epoch: int,
    validation: tf.data.Dataset,
    train: TrainParams,
    checkpoint_dir: Path,
    state: TrainState,
    callbacks: Sequence[keras.callbacks.Callback],
) -> keras.Model:
    """Fit from the state's last completed epoch (0 for a new run); return the best epoch's model."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    model = fresh_model()
    if state.completed_epochs:
        model.optimizer.build(model.trainable_variables)
        load_variables(checkpointed_variables(model, with_optimizer=True), checkpoint_dir / LAST_STATE_FILE)
    if state.completed_epochs < train.epochs and not state.stopped_early:
        checkpoint = EpochCheckpoint(checkpoint_dir, state, train.patience)
        try:
            model.fit(
                batches_from(state.completed_epochs),
                epochs=train.epochs,
                initial_epoch=state.completed_epochs,
                steps_per_epoch=steps_per_epoch,
                validation_data=validation,
                callbacks=[checkpoint, *callbacks],
                verbose=2,
            )
        except BaseException:
            # The epochs it finished stay resumable; fit's own error is the one to report.
            checkpoint.finish(raise_errors=False)
            raise
        checkpoint.finish()
    load_variables(
        checkpointed_variables(model, with_optimizer=False), checkpoint_dir / best_file_name(state.best_epoch)
    )
    return model


def training_fingerprint(model: ModelParams, train: TrainParams, augment: AugmentParams, data_digest: str) -> str:
    """Identity of a training run: a checkpoint resumes only a run with the same inputs."""
    content = {
        "model": model.model_dump(),
        "train": train.model_dump(),
        "augment": augment.model_dump(),
        "data": data_digest,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def seed_everything(seed: int, deterministic_ops: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with `deterministic_ops`, ask for deterministic kernels.

    Keras refuses XLA (`jit_compile`) while op determinism is on and silently trains without it,
    so a run that asks for XLA turns determinism off (and is then not bit-reproducible).
    """
    from tensorflow.python.framework import config as tensorflow_config

    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tensorflow_config.enable_op_determinism()
    else:
        tensorflow_config.disable_op_determinism()


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of `labels` predicted correctly (NaN when there are none)."""
    return float(np.mean(predictions == labels)) if len(labels) else float("nan")


def record_closed_form_fit(
    state: TrainState, verifier: WriterVerifier, cache: FeatureCache, data: TrainingData
) -> None:
    """Record a closed-form head in the training state as one completed epoch (train and
    validation accuracy of its answers), so reports and the learning curve read it like the others."""
    samples, labels = flat_views(cache.train_views, data.train.labels)
    state.history = {
        "accuracy": [accuracy(np.argmax(verifier.scores(samples), axis=1), labels)],
        "val_accuracy": [accuracy(np.argmax(verifier.scores(cache.val), axis=1), data.val.labels)],
    }
    state.completed_epochs, state.best_epoch = 1, 0


def feature_embedder(base: keras.Model, image_size: int) -> keras.Model:
    """The embedder of the cached embeddings, in float32 whatever the training's dtype policy.

    The verifier, the threshold and the confidence are fitted on these embeddings (and on the
    evaluate stage's, also float32), and the registered model serves in float32 (`float32_copy`):
    one precision, so the served scores are the calibrated ones. Mixed precision still speeds up
    what trains (the online mode's steps and a Keras head).
    """
    return float32_copy(build_embedder(base, image_size))


def train_classifier(
    paths: ProjectPaths,
    data: TrainingData,
    model_params: ModelParams,
    train: TrainParams,
    augment: AugmentParams,
    fingerprint: str,
    device: str,
    run_id: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    show_progress: bool = True,
) -> TrainResult:
    """Train the head in `train.mode`, resuming an unfinished run with the same fingerprint.

    Returns the full classifier (base and trained head) with the best epoch's weights. The
    checkpoint folder is removed once the run has finished.
    """
    seed_everything(train.seed, deterministic_ops=not train.jit_compile)
    if train.jit_compile:
        warnings.warn(
            "train.jit_compile is on: XLA cannot run with TensorFlow's deterministic kernels, so this run "
            "is not bit-reproducible. Set train.jit_compile: false for reproducible runs.",
            stacklevel=2,
        )
    class_count = len(data.classes)
    state = read_resumable_state(paths.train_checkpoint_dir, fingerprint)
    if state is None:
        shutil.rmtree(paths.train_checkpoint_dir, ignore_errors=True)
        state = TrainState(fingerprint=fingerprint, run_id=run_id)
    resumed_from = state.completed_epochs
    paths.features_dir.mkdir(parents=True, exist_ok=True)
    base = build_base(data.image_size, model_params.weights, paths.root, train.seed)
    embedder = feature_embedder(base, data.image_size)
    digest = model_weights_digest(base)
    key = features_key(
        data,
        augment,
        train.augmented_views,
        train.seed,
        digest,
        embedder.compute_dtype,
        embedding_code_digest(),
        library_versions(),
    )
    cache = read_feature_cache(paths.features_dir, key)
    reused = cache is not None
    embed_seconds, embedded = 0.0, 0
    if cache is None:
        cache = compute_features(
            embedder, data, augment, train.augmented_views, train.seed, train.embed_batch_size, show_progress
        )
        write_feature_cache(paths.features_dir, key, cache)
        embed_seconds, embedded = cache.embed_seconds, cache.images_embedded
    verifier = fit_writer_verifier(
        *flat_views(cache.train_views, data.train.labels),
        class_count,
        model_params.verifier_regularization,
        model_params.verifier_whitening,
    )
    reference_embeddings = cache.train_views
    statistics = embedding_statistics(reference_embeddings) if model_params.standardize_features else (None, None)
    dense_units = model_params.dense_units if model_params.head == "mlp" else 0
    spec = HeadSpec(len(data.classes), dense_units, model_params.dropout, train.seed, *statistics)
    if model_params.head == "ridge":
        # The verifier's writer-dependent linear models are the head: solved exactly, no epochs.
        classifier = build_ridge_classifier(base, data.image_size, verifier, model_params.dropout, train.seed)
    else:
        classifier = build_classifier(base, data.image_size, spec)
    started = time.perf_counter()
    if model_params.head == "ridge":
        samples_per_epoch = cache.train_views.shape[0] * len(data.train)
        record_closed_form_fit(state, verifier, cache, data)
    elif train.mode == "cached":
        samples_per_epoch = cache.train_views.shape[0] * len(data.train)
        steps = math.ceil(samples_per_epoch / train.batch_size)
        validation = tf.data.Dataset.from_tensor_slices((cache.val, one_hot(data.val.labels, class_count)))
        head = fit_with_resume(
            lambda: compile_model(build_head(spec), train, steps_per_execution=steps),
            lambda start: cached_batches(
                cache.train_views, data.train.labels, class_count, train.seed, start, train.epochs, train.batch_size
            ),
            steps,
            prefetched(validation.batch(train.batch_size)),
            train,
            paths.train_checkpoint_dir,
            state,
            callbacks,
        )
        copy_head_weights(head, classifier)
    else:
        samples_per_epoch = len(data.train)
        steps = math.ceil(samples_per_epoch / train.batch_size)
        trained = fit_with_resume(
            lambda: compile_model(build_classifier(base, data.image_size, spec), train),
            lambda start: online_batches(
                data.train, class_count, augment, train.seed, start, train.epochs, train.batch_size
            ),
            steps,
            plain_batches(data.val, class_count, train.embed_batch_size),
            train,
            paths.train_checkpoint_dir,
            state,
            callbacks,
        )
        # The returned classifier is a fresh, uncompiled copy: the saved model is for inference and
        # carries neither the optimizer's state (twice the head's size) nor its class.
        copy_head_weights(trained, classifier)
    train_seconds = time.perf_counter() - started
    epochs_run = state.completed_epochs - resumed_from
    shutil.rmtree(paths.train_checkpoint_dir, ignore_errors=True)
    return TrainResult(
        classifier=classifier,
        verifier=verifier,
        classes=data.classes,
        state=state,
        mode=train.mode,
        train_seconds=train_seconds,
        train_images_per_second=samples_per_epoch * epochs_run / train_seconds if epochs_run else 0.0,
        embed_seconds=embed_seconds,
        embed_images_per_second=embedded / embed_seconds if embed_seconds else 0.0,
        features_reused=reused,
        resumed_from_epoch=resumed_from,
        device=device,
    )

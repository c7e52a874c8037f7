"""The trained heads (`model.head: linear | mlp`): Keras and Adam, as in the reference.

- `cached`: the head trains on the `embed` stage's stored views; every epoch is one shuffled pass
  over all of them.
- `online` (the reference behaviour): every step augments fresh images and runs the frozen base.

Early stopping watches the validation loss, the best epoch's weights are kept, and an interrupted
run resumes from its last completed epoch (`tasks.training.checkpoints`). Returns the head as arrays
(`tasks.model.head`), like the closed-form ridge head of `tasks.training.train`.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from tasks.data.manifest import read_manifest
from tasks.model.classifier import build_base, build_classifier
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.model.head import HeadWeights
from tasks.model.keras_head import HeadSpec, build_head, embedding_statistics, head_weights_of
from tasks.training.checkpoint_state import TrainState
from tasks.training.checkpoints import (
    LAST_STATE_FILE,
    EpochCheckpoint,
    best_file_name,
    checkpointed_variables,
    load_variables,
    read_resumable_state,
)
from tasks.training.input_pipeline import (
    cached_batches,
    load_training_data,
    one_hot,
    online_batches,
    plain_batches,
    prefetched,
)
from tasks.training.train import EmbeddedTraining
from tasks.workspace.params_model import AugmentParams, ModelParams, TrainParams
from tasks.workspace.paths import ProjectPaths


@dataclass(frozen=True)
class TrainedHead:
    """A Keras head's arrays, its training state and its throughput."""

    head: HeadWeights
    state: TrainState
    seconds: float
    images_per_second: float
    resumed_from_epoch: int


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


def head_spec(data: EmbeddedTraining, model_params: ModelParams, seed: int) -> HeadSpec:
    """The head's shape and, with `model.standardize_features`, the training views' statistics."""
    statistics = embedding_statistics(data.train_views) if model_params.standardize_features else (None, None)
    dense_units = model_params.dense_units if model_params.head == "mlp" else 0
    return HeadSpec(len(data.classes), dense_units, model_params.dropout, seed, *statistics)


def train_keras_head(
    paths: ProjectPaths,
    data: EmbeddedTraining,
    model_params: ModelParams,
    train: TrainParams,
    augment: AugmentParams,
    fingerprint: str,
    run_id: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    show_progress: bool = True,
) -> TrainedHead:
    """Train the head in `train.mode`, resuming an unfinished run with the same fingerprint; the
    checkpoint folder is removed once the run has finished."""
    del show_progress  # Keras prints its own per-epoch lines (verbose=2)
    # The same layer names and generators as in a fresh process (the pipeline flow runs embed first);
    # clearing the session also resets the dtype policy, which the train stage set: kept.
    policy = keras.mixed_precision.global_policy()
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
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
    spec = head_spec(data, model_params, train.seed)
    started = time.perf_counter()
    if train.mode == "cached":
        samples_per_epoch = data.train_views.shape[0] * data.train_views.shape[1]
        steps = math.ceil(samples_per_epoch / train.batch_size)
        validation = tf.data.Dataset.from_tensor_slices((data.val, one_hot(data.val_labels, class_count)))
        trained = fit_with_resume(
            lambda: compile_model(build_head(spec, data.val.shape[-1]), train, steps_per_execution=steps),
            lambda start: cached_batches(
                data.train_views, data.train_labels, class_count, train.seed, start, train.epochs, train.batch_size
            ),
            steps,
            prefetched(validation.batch(train.batch_size)),
            train,
            paths.train_checkpoint_dir,
            state,
            callbacks,
        )
    else:
        images = load_training_data(read_manifest(paths.manifest_file), paths.root)
        base = build_base(images.image_size, model_params.weights, paths.root, train.seed)
        samples_per_epoch = len(images.train)
        steps = math.ceil(samples_per_epoch / train.batch_size)
        trained = fit_with_resume(
            lambda: compile_model(
                build_classifier(base, images.image_size, spec, EmbeddingSpec.of(model_params)), train
            ),
            lambda start: online_batches(
                images.train, class_count, augment, train.seed, start, train.epochs, train.batch_size
            ),
            steps,
            plain_batches(images.val, class_count, train.embed_batch_size),
            train,
            paths.train_checkpoint_dir,
            state,
            callbacks,
        )
    seconds = time.perf_counter() - started
    epochs_run = state.completed_epochs - resumed_from
    shutil.rmtree(paths.train_checkpoint_dir, ignore_errors=True)
    return TrainedHead(
        head=head_weights_of(trained),
        state=state,
        seconds=seconds,
        images_per_second=samples_per_epoch * epochs_run / seconds if epochs_run and seconds else 0.0,
        resumed_from_epoch=resumed_from,
    )

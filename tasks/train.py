"""Training the classifier's head on a frozen InceptionV3, in two modes.

- `online` (the reference behaviour): every step augments fresh images and runs the frozen base.
- `cached`: the base is frozen, so its embeddings of each training image as it is (the clean
  view) and of `augmented_views` augmented copies (and of the un-augmented validation and test
  images) are computed once, kept under `data/features/` keyed by everything they depend on, and
  the head trains on them: every epoch is one shuffled pass over all the views.

In both modes the writer-dependent verifier (`tasks.verifier`) is fitted on the cached training
views (the online mode computes them once for it).

Both modes shuffle and augment with stateless seeds derived from (seed, epoch, image index), so a
run is reproducible on CPU and an interrupted run resumes from its last completed epoch with the
data order it would have had. Early stopping watches the validation loss and the best epoch's
weights are kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from tasks.augment import augment_image, element_seed
from tasks.config import AugmentParams, ModelParams, TrainParams
from tasks.errors import TrainingDataError
from tasks.fused import folded_inference_function
from tasks.model import (
    FEATURE_DIM,
    HeadSpec,
    build_base,
    build_classifier,
    build_embedder,
    build_head,
    build_ridge_classifier,
    copy_head_weights,
    embedding_statistics,
)
from tasks.model import weights_digest as model_weights_digest
from tasks.optimizer import FusedAdam
from tasks.paths import ProjectPaths
from tasks.verifier import WriterVerifier, fit_writer_verifier

GENUINE = "genuine"
STATE_ENTRY = "state"
ARRAY_PREFIX = "arr_"
SEED_STATE_NAME = "seed_generator_state"
CHECKPOINT_SUFFIX = ".npz"
LAST_STATE_FILE = f"last{CHECKPOINT_SUFFIX}"
BEST_PREFIX = "best-"
CACHED_VIEW_EPOCH_OFFSET = 1_000_000
FEATURES_SUFFIX = ".npz"
FEATURES_META_SUFFIX = ".json"
PREFETCH_BATCHES = 2
# Bumped when what the cache holds changes meaning (2: view 0 of train_views is the clean image).
FEATURES_FORMAT = 2
# What reading a missing, empty, truncated or foreign .npz raises.
UNREADABLE_NPZ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError)


@dataclass(frozen=True)
class SplitImages:
    """The genuine images of one split, with their class labels and source hashes."""

    images: np.ndarray
    labels: np.ndarray
    hashes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TrainingData:
    """Everything the classifier trains and validates on, in memory (decoded once)."""

    classes: tuple[str, ...]
    train: SplitImages
    val: SplitImages
    test: SplitImages
    image_size: int


@dataclass
class TrainState:
    """Progress of a training run, saved after every epoch so a killed run can resume."""

    fingerprint: str
    run_id: str | None = None
    completed_epochs: int = 0
    best_epoch: int = -1
    best_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: dict[str, list[float]] = field(default_factory=dict)


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
    test_accuracy: float
    test_predictions: np.ndarray  # most probable class of each test image, in data.test's order


def read_grey_image(path: Path) -> np.ndarray:
    """A preprocessed image as an (height, width, 1) uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))[..., np.newaxis]


def split_images(rows: Sequence[dict[str, str]], root: Path, classes: tuple[str, ...]) -> SplitImages:
    """Decode the rows' preprocessed images and label them by writer."""
    index = {writer: position for position, writer in enumerate(classes)}
    images = [read_grey_image(root / row["prepared_path"]) for row in rows]
    return SplitImages(
        images=np.stack(images) if images else np.zeros((0, 1, 1, 1), dtype=np.uint8),
        labels=np.array([index[row["writer"]] for row in rows], dtype=np.int32),
        hashes=tuple(row["prepared_sha256"] for row in rows),
    )


def load_training_data(manifest_rows: Sequence[dict[str, str]], root: Path) -> TrainingData:
    """The genuine train, val and test images of the manifest; classes are the writers with training images."""
    genuine = [row for row in manifest_rows if row["kind"] == GENUINE]
    classes = tuple(sorted({row["writer"] for row in genuine if row["split"] == "train"}))
    if len(classes) < 2:
        raise TrainingDataError(
            f"the manifest has {len(classes)} writer(s) with training images; at least 2 are needed"
        )
    by_split = {
        split: [row for row in genuine if row["split"] == split and row["writer"] in classes]
        for split in ("train", "val", "test")
    }
    if not by_split["val"]:
        raise TrainingDataError(
            "no validation images: early stopping needs them. Set prepare.val_fraction above 0 "
            "(and enough genuine signatures per writer), then rerun prepare."
        )
    data = {split: split_images(rows, root, classes) for split, rows in by_split.items()}
    return TrainingData(classes, data["train"], data["val"], data["test"], int(data["train"].images.shape[1]))


def to_model_input(image: tf.Tensor) -> tf.Tensor:
    """uint8 grey (h, w, 1) to float RGB (h, w, 3) in [0, 255], what the classifier takes."""
    return tf.image.grayscale_to_rgb(tf.cast(image, tf.float32))


def one_hot(labels: np.ndarray, class_count: int) -> np.ndarray:
    return np.eye(class_count, dtype=np.float32)[labels]


def prefetched(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with a fixed prefetch buffer and tf.data's autotuner switched off.

    With the autotuner on, finishing or deleting an iterator waited 1 to 5 s in about one case in
    three on the 2-core development machine (its background threads wind down on a timer), and
    Keras opens a new validation iterator every epoch. Parallel maps keep one call per core.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(PREFETCH_BATCHES).with_options(options)


def plain_batches(split: SplitImages, class_count: int | None, batch_size: int) -> tf.data.Dataset:
    """Un-augmented images (with one-hot labels when `class_count` is given), batched."""
    images = tf.data.Dataset.from_tensor_slices(split.images).map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
    if class_count is None:
        return prefetched(images.batch(batch_size))
    labels = tf.data.Dataset.from_tensor_slices(one_hot(split.labels, class_count))
    return prefetched(tf.data.Dataset.zip((images, labels)).batch(batch_size))


def epoch_order(count: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """A permutation of range(count) that depends only on (seed, epoch)."""
    stateless_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=stateless_seed)


def augmented_images(
    images: tf.Tensor, augment: AugmentParams, seed: int, epoch: tf.Tensor, order: tf.Tensor
) -> tf.data.Dataset:
    """Images in `order`, each augmented with the seed of (seed, epoch, its index), in parallel."""

    def load(index: tf.Tensor) -> tf.Tensor:
        image = tf.cast(tf.gather(images, index), tf.float32)
        return tf.image.grayscale_to_rgb(augment_image(image, element_seed(seed, epoch, index), augment))

    return tf.data.Dataset.from_tensor_slices(order).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def online_batches(
    split: SplitImages,
    class_count: int,
    augment: AugmentParams,
    seed: int,
    start_epoch: int,
    epochs: int,
    batch_size: int,
) -> tf.data.Dataset:
    """Freshly augmented training batches for epochs [start_epoch, epochs), shuffled per epoch."""
    images = tf.constant(split.images)
    labels = tf.constant(one_hot(split.labels, class_count))

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order = epoch_order(len(split), seed, epoch)
        pixels = augmented_images(images, augment, seed, epoch, order)
        targets = tf.data.Dataset.from_tensor_slices(tf.gather(labels, order))
        return tf.data.Dataset.zip((pixels, targets)).batch(batch_size)

    return prefetched(tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch))


def flat_views(views: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(views, n, features) embeddings and n labels as (views * n, features) samples and their labels."""
    return views.reshape(-1, views.shape[-1]), np.tile(labels, views.shape[0])


def cached_batches(
    views: np.ndarray, labels: np.ndarray, class_count: int, seed: int, start_epoch: int, epochs: int, batch_size: int
) -> tf.data.Dataset:
    """Training batches of cached embeddings: every epoch is one pass over all views, shuffled per epoch."""
    samples, sample_labels = flat_views(views, labels)
    features = tf.constant(samples)
    targets = tf.constant(one_hot(sample_labels, class_count))

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order = epoch_order(len(sample_labels), seed, epoch)
        return tf.data.Dataset.from_tensor_slices((tf.gather(features, order), tf.gather(targets, order))).batch(
            batch_size
        )

    return prefetched(tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch))


def embed(
    step: Callable[[tf.Tensor], tf.Tensor], batches: tf.data.Dataset, count: int, description: str, show_progress: bool
) -> np.ndarray:
    """Run the frozen base over `batches` of images, with a progress bar; returns (count, 2048)."""
    outputs = []
    with tqdm(total=count, desc=description, unit="img", disable=not show_progress) as progress:
        for batch in batches:
            outputs.append(step(batch).numpy().astype(np.float32))
            progress.update(int(batch.shape[0]))
    return np.concatenate(outputs) if outputs else np.zeros((0, FEATURE_DIM), dtype=np.float32)


@dataclass(frozen=True)
class FeatureCache:
    """Embeddings of the frozen base: training views (view 0 the clean images, then the augmented
    copies), plain validation and test images."""

    train_views: np.ndarray
    val: np.ndarray
    test: np.ndarray
    embed_seconds: float
    images_embedded: int


def features_key(
    data: TrainingData, augment: AugmentParams, views: int, seed: int, base_digest: str, compute_dtype: str
) -> str:
    """What the cached embeddings depend on: the images, augmentation, views, seed, base weights,
    the precision the base ran in (bfloat16 embeddings are not float32 ones) and the cache format."""
    content = {
        "format": FEATURES_FORMAT,
        "train": data.train.hashes,
        "val": data.val.hashes,
        "test": data.test.hashes,
        "image_size": data.image_size,
        "augment": augment.model_dump(),
        "views": views,
        "seed": seed,
        "base_weights": base_digest,
        "compute_dtype": compute_dtype,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def read_feature_cache(cache_dir: Path, key: str) -> FeatureCache | None:
    """The cached embeddings for `key`, or None when there are none (or they are unreadable)."""
    arrays_file, meta_file = cache_dir / f"{key}{FEATURES_SUFFIX}", cache_dir / f"{key}{FEATURES_META_SUFFIX}"
    if not (arrays_file.is_file() and meta_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        with np.load(arrays_file) as arrays:
            return FeatureCache(
                arrays["train_views"], arrays["val"], arrays["test"], meta["embed_seconds"], meta["images"]
            )
    except UNREADABLE_NPZ_ERRORS:
        return None


def write_feature_cache(cache_dir: Path, key: str, cache: FeatureCache) -> None:
    """Store embeddings under `key` (written to a temporary name, then renamed) and drop older keys."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.iterdir():
        if stale.is_file() and not stale.name.startswith(key):
            stale.unlink()
    arrays = {"train_views": cache.train_views, "val": cache.val, "test": cache.test}
    save_arrays(arrays, cache_dir / f"{key}{FEATURES_SUFFIX}")
    meta = {"key": key, "embed_seconds": cache.embed_seconds, "images": cache.images_embedded}
    (cache_dir / f"{key}{FEATURES_META_SUFFIX}").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def compute_features(
    embedder: keras.Model,
    data: TrainingData,
    augment: AugmentParams,
    views: int,
    seed: int,
    batch_size: int,
    show_progress: bool,
) -> FeatureCache:
    """Embed every training image as it is and in `views` augmented copies, and the plain val and test images."""
    started = time.perf_counter()
    step = folded_inference_function(embedder)
    images = tf.constant(data.train.images)
    natural_order = tf.range(len(data.train), dtype=tf.int64)
    clean = plain_batches(data.train, None, batch_size)
    train_views = [embed(step, clean, len(data.train), "embed train images", show_progress)]
    for view in range(views):
        epoch = tf.constant(CACHED_VIEW_EPOCH_OFFSET + view, tf.int64)
        batches = prefetched(augmented_images(images, augment, seed, epoch, natural_order).batch(batch_size))
        train_views.append(embed(step, batches, len(data.train), f"embed train view {view + 1}/{views}", show_progress))
    val = embed(step, plain_batches(data.val, None, batch_size), len(data.val), "embed val", show_progress)
    test = embed(step, plain_batches(data.test, None, batch_size), len(data.test), "embed test", show_progress)
    count = (1 + views) * len(data.train) + len(data.val) + len(data.test)
    return FeatureCache(np.stack(train_views), val, test, time.perf_counter() - started, count)


def training_fingerprint(model: ModelParams, train: TrainParams, augment: AugmentParams, data_digest: str) -> str:
    """Identity of a training run: a checkpoint resumes only a run with the same inputs."""
    content = {
        "model": model.model_dump(),
        "train": train.model_dump(),
        "augment": augment.model_dump(),
        "data": data_digest,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def read_resumable_state(checkpoint_dir: Path, fingerprint: str) -> TrainState | None:
    """The saved state of an unfinished run with this fingerprint (None when there is none, or
    its checkpoint is unreadable). The state lives in the same file as the variables it
    describes, so the two can never disagree after a kill."""
    try:
        with np.load(checkpoint_dir / LAST_STATE_FILE) as arrays:
            state = TrainState(**json.loads(str(arrays[STATE_ENTRY])))
    except (*UNREADABLE_NPZ_ERRORS, TypeError):
        return None
    return state if state.fingerprint == fingerprint else None


def seed_state_variables(model: keras.Model) -> list[keras.Variable]:
    """The random-generator states of a model's layers (Dropout)."""
    return [variable for variable in model.variables if SEED_STATE_NAME in variable.path]


def checkpointed_variables(model: keras.Model, with_optimizer: bool) -> list[keras.Variable]:
    """What a checkpoint holds: the trainable (head) variables, and for resuming also the
    optimizer's and the dropout generators' state. The frozen base is never written: it is
    rebuilt identically from `model.weights` and the seed, which keeps a checkpoint a few MB."""
    variables = list(model.trainable_variables)
    if with_optimizer:
        variables += list(model.optimizer.variables) + seed_state_variables(model)
    return variables


def variable_values(variables: Sequence[keras.Variable]) -> dict[str, np.ndarray]:
    """Copies of the variables' values, named in order (arr_0, arr_1, ...). Explicit copies: a
    background thread writes them while training goes on updating the variables."""
    return {
        f"{ARRAY_PREFIX}{index}": np.array(keras.ops.convert_to_numpy(variable), copy=True)
        for index, variable in enumerate(variables)
    }


def save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write named arrays to an .npz, atomically (a temporary name, then a rename)."""
    temporary = path.with_name(f"partial-{path.name}")
    with temporary.open("wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the rename, so a power cut cannot leave a truncated file
    temporary.replace(path)


def load_variables(variables: Sequence[keras.Variable], path: Path) -> None:
    """Assign the values saved by `variable_values` + `save_arrays`, in the same order."""
    with np.load(path) as arrays:
        values = [arrays[name] for name in arrays.files if name.startswith(ARRAY_PREFIX)]
    if len(values) != len(variables):
        raise ValueError(f"{path} holds {len(values)} arrays, the model {len(variables)} variables")
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def best_file_name(epoch: int) -> str:
    """The checkpoint file of the best weights, named by their epoch so the resumable state (which
    records the best epoch) always names a file that exists, whatever moment a kill hits."""
    return f"{BEST_PREFIX}{epoch}{CHECKPOINT_SUFFIX}"


class EpochCheckpoint(keras.callbacks.Callback):
    """Early stopping on validation loss, best weights, and a resumable state after every epoch.

    The values are copied at the end of the epoch and written by a background thread while the
    next epoch trains (a cached-mode epoch takes about as long as writing its ~25 MB). At most one
    epoch's writes are in flight: the next epoch end waits for them, so a failed write stops
    training there, and `finish` waits for the last.
    """

    def __init__(self, checkpoint_dir: Path, state: TrainState, patience: int) -> None:
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.state = state
        self.patience = patience
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self.pending: Future[None] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.wait_for_writes()
        logs = logs or {}
        for name, value in logs.items():
            self.state.history.setdefault(name, []).append(float(value))
        best = None
        validation_loss = float(logs["val_loss"])
        if validation_loss < self.state.best_val_loss:
            self.state.best_val_loss, self.state.best_epoch = validation_loss, epoch
            self.state.epochs_without_improvement = 0
            best = variable_values(checkpointed_variables(self.model, with_optimizer=False))
        else:
            self.state.epochs_without_improvement += 1
        self.state.completed_epochs = epoch + 1
        if self.state.epochs_without_improvement >= self.patience:
            self.state.stopped_early = True
            self.model.stop_training = True
        resumable = variable_values(checkpointed_variables(self.model, with_optimizer=True))
        resumable[STATE_ENTRY] = np.array(json.dumps(asdict(self.state)))
        self.pending = self.writer.submit(self.save_epoch, best, resumable, self.state.best_epoch)

    def save_epoch(self, best: dict[str, np.ndarray] | None, resumable: dict[str, np.ndarray], best_epoch: int) -> None:
        """Write the new best weights (if any), then the resumable state, then drop older best files."""
        if best is not None:
            save_arrays(best, self.checkpoint_dir / best_file_name(best_epoch))
        save_arrays(resumable, self.checkpoint_dir / LAST_STATE_FILE)
        for stale in self.checkpoint_dir.glob(f"{BEST_PREFIX}*{CHECKPOINT_SUFFIX}"):
            if stale.name != best_file_name(best_epoch):
                stale.unlink()

    def wait_for_writes(self) -> None:
        """Block until the queued writes have finished; re-raise their error."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def finish(self, raise_errors: bool = True) -> None:
        """Wait for the last writes and stop the writer thread."""
        self.writer.shutdown(wait=True)
        if raise_errors:
            self.wait_for_writes()


def compile_model(model: keras.Model, train: TrainParams, steps_per_execution: int = 1) -> keras.Model:
    """Adam (its fused kernel, `tasks.optimizer`) and categorical cross-entropy, as in the reference.

    `steps_per_execution` runs that many steps per call into TensorFlow: the same updates, less
    Python between them (a sixth of the time of a cached-mode head step is otherwise overhead).
    """
    model.compile(
        optimizer=FusedAdam(learning_rate=train.learning_rate),
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


def predicted_classes(model: keras.Model, inputs: tf.data.Dataset | np.ndarray, count: int) -> np.ndarray:
    """The most probable class of each of `count` inputs (an empty array when there are none)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argmax(model.predict(inputs, verbose=0), axis=1)


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
    embedder = build_embedder(base, data.image_size)
    digest = model_weights_digest(base)
    key = features_key(data, augment, train.augmented_views, train.seed, digest, embedder.compute_dtype)
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
        *flat_views(cache.train_views, data.train.labels), class_count, model_params.verifier_regularization
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
        test_predictions = np.argmax(verifier.scores(cache.test), axis=1) if len(data.test) else np.zeros(0, np.int64)
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
        test_predictions = predicted_classes(head, cache.test, len(data.test))
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
        test_predictions = predicted_classes(
            classifier, plain_batches(data.test, None, train.embed_batch_size), len(data.test)
        )
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
        test_accuracy=accuracy(test_predictions, data.test.labels),
        test_predictions=test_predictions,
    )

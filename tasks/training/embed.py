"""The embed stage's core: every prepared image through the frozen base, once.

The base is frozen, so its embedding of an image never changes while the image, the weights, the
image size and the code do not: the `embed` stage computes them all in one process, and DVC (its
deps and params in dvc.yaml, `constraints.txt` among them for the library versions) decides when they
are stale. Per split (`tasks.training.embedding_files`): the training images as they are (view 0) and in
`augmented_views` augmented copies, and every other split's images as they are. Embeddings are
float32 whatever the training's mixed-precision policy (`feature_embedder`): the verifier, the
threshold and the confidence are fitted on them and the registered model serves in float32.

No image is embedded in a batch of one (`embedded_batch`): oneDNN, TensorFlow's CPU kernels, computes a
batch of one with other kernels than larger ones, chosen by the processor's instruction set, so a split
whose last batch held one image got other float bits on another CPU (measured: a fresh clone's dvc.lock
then differed in that split's file), while batches of two or more give every image the same bits
whatever their size and its position.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tasks.model.classifier import build_embedder
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.model.fused import folded_inference_function
from tasks.model.keras_files import float32_copy
from tasks.training.embedding_files import EMBEDDED_SPLITS, EmbeddedRows, rows_of_split
from tasks.training.input_pipeline import (
    SplitImages,
    augmented_images,
    image_keys,
    plain_batches,
    prefetched,
    read_grey_image,
)
from tasks.workspace.params_model import AugmentParams

CACHED_VIEW_EPOCH_OFFSET = 1_000_000  # the augmentation epochs of the stored views, apart from online training's
TRAIN_SPLIT = "train"


def feature_embedder(base: keras.Model, image_size: int, embedding: EmbeddingSpec) -> keras.Model:
    """The embedder of the stored embeddings, in float32 whatever the training's dtype policy.

    The verifier, the threshold and the confidence are fitted on these embeddings, and the
    registered model serves in float32 (`float32_copy`): one precision, so the served scores are the
    calibrated ones. Mixed precision still speeds up what trains (the online mode's steps, a Keras head).
    """
    return float32_copy(build_embedder(base, image_size, embedding))


def embed(
    step: Callable[[tf.Tensor], tf.Tensor], batches: tf.data.Dataset, count: int, description: str, show_progress: bool
) -> np.ndarray:
    """Run the frozen base over `batches` of images, with a progress bar; returns (count, features)."""
    outputs = []
    with tqdm(total=count, desc=description, unit="img", disable=not show_progress) as progress:
        for batch in batches:
            outputs.append(embedded_batch(step, batch))
            progress.update(int(batch.shape[0]))
    return np.concatenate(outputs) if outputs else np.zeros((0, output_width(step)), dtype=np.float32)


def embedded_batch(step: Callable[[tf.Tensor], tf.Tensor], batch: tf.Tensor) -> np.ndarray:
    """`step` of `batch` as float32 NumPy; a batch of one image runs as two copies of it (the module's
    docstring says why), at the cost of one more image per split and view at most."""
    if int(batch.shape[0]) == 1:
        return step(tf.concat([batch, batch], axis=0)).numpy()[:1].astype(np.float32)
    return step(batch).numpy().astype(np.float32)


def output_width(step: Callable[[tf.Tensor], tf.Tensor]) -> int:
    """The feature count of a traced embedding function (`tasks.model.fused`: one input signature)."""
    return int(step.get_concrete_function().structured_outputs.shape[-1])  # type: ignore[attr-defined]


@dataclass(frozen=True)
class EmbeddingRun:
    """What one embedding computed, per split, and how long it took."""

    splits: dict[str, EmbeddedRows]
    seconds: float
    images_embedded: int


def decoded(rows: Sequence[dict[str, str]], root: Path) -> SplitImages:
    """The rows' preprocessed images, decoded once (labels unused: embedding needs none)."""
    images = [read_grey_image(root / row["prepared_path"]) for row in rows]
    return SplitImages(
        images=np.stack(images) if images else np.zeros((0, 1, 1, 1), dtype=np.uint8),
        labels=np.zeros(len(rows), dtype=np.int32),
        hashes=tuple(row["prepared_sha256"] for row in rows),
    )


def split_views(
    step: Callable[[tf.Tensor], tf.Tensor],
    images: SplitImages,
    augment: AugmentParams | None,
    views: int,
    seed: int,
    batch_size: int,
    label: str,
    show_progress: bool,
) -> np.ndarray:
    """(1 + views, rows, features): the images as they are, then `views` augmented copies (none without `augment`)."""
    embedded = [embed(step, plain_batches(images, None, batch_size), len(images), f"embed {label}", show_progress)]
    if augment is not None:
        pixels = tf.constant(images.images)
        keys = tf.constant(image_keys(images.hashes))
        natural_order = tf.range(len(images), dtype=tf.int64)
        for view in range(views):
            epoch = tf.constant(CACHED_VIEW_EPOCH_OFFSET + view, tf.int64)
            batches = prefetched(augmented_images(pixels, keys, augment, seed, epoch, natural_order).batch(batch_size))
            description = f"embed {label} view {view + 1}/{views}"
            embedded.append(embed(step, batches, len(images), description, show_progress))
    return np.stack(embedded)


def embed_manifest(
    embedder: keras.Model,
    manifest_rows: Sequence[dict[str, str]],
    root: Path,
    augment: AugmentParams,
    views: int,
    seed: int,
    batch_size: int,
    show_progress: bool = True,
) -> EmbeddingRun:
    """Embed every row of `EMBEDDED_SPLITS`: the training split as it is and in `views` augmented
    copies (seeded per image, as online training's epochs are), the others as they are."""
    started = time.perf_counter()
    step = folded_inference_function(embedder)
    splits: dict[str, EmbeddedRows] = {}
    count = 0
    for split in EMBEDDED_SPLITS:
        rows = rows_of_split(manifest_rows, split)
        images = decoded(rows, root)
        augmentation = augment if split == TRAIN_SPLIT else None
        stacked = split_views(step, images, augmentation, views, seed, batch_size, split, show_progress)
        splits[split] = EmbeddedRows(stacked, tuple(row["path"] for row in rows), images.hashes)
        count += stacked.shape[0] * stacked.shape[1]
    return EmbeddingRun(splits, time.perf_counter() - started, count)

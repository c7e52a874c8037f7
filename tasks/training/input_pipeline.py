"""The images training reads and the tf.data pipelines that feed them to the model.

Decoding the prepared images of the manifest once (`load_training_data`), turning them into the
classifier's input, and the batch streams: plain images, freshly augmented images for the online
mode (shuffled per epoch with stateless seeds derived from (seed, epoch), each image augmented with
a seed of (seed, epoch, its content key: `image_keys`), so a resumed run sees what it would have had
and an image's views do not depend on which other images share its split), and cached embeddings for
the cached mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from tasks.data.manifest import training_rows
from tasks.training.augment import augment_image, element_seed
from tasks.training.embedding_files import flat_views
from tasks.workspace.params_model import AugmentParams

GENUINE = "genuine"
PREFETCH_BATCHES = 2
# Hex digits of an image's SHA-256 that key its augmentation: 52 bits, so `element_seed`'s key * 16 stays
# inside an int64.
IMAGE_KEY_HEX_DIGITS = 13


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
    image_size: int


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
    """The genuine train and val images of the manifest (the online mode's input); classes are the
    writers with training images, as for the embeddings (`tasks.training.train.training_rows`, its checks too).

    Test images are not loaded: the online mode's training and early stopping never see them.
    """
    classes, by_split = training_rows(manifest_rows)
    data = {split: split_images(rows, root, classes) for split, rows in by_split.items()}
    return TrainingData(classes, data["train"], data["val"], int(data["train"].images.shape[1]))


def load_split_images(
    manifest_rows: Sequence[dict[str, str]], root: Path, classes: tuple[str, ...], split: str
) -> SplitImages:
    """The genuine images of one split whose writer is one of `classes` (for reports and benchmarks)."""
    rows = [
        row for row in manifest_rows if row["kind"] == GENUINE and row["split"] == split and row["writer"] in classes
    ]
    return split_images(rows, root, classes)


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


def image_keys(hashes: Sequence[str]) -> np.ndarray:
    """Each image's augmentation key: the leading `IMAGE_KEY_HEX_DIGITS` of its prepared PNG's SHA-256 as
    an integer, so an image's augmented views depend on its pixels, not on where it sits in its split
    (an enrolled reference gets the views the next `dvc repro` gives it among all training images)."""
    return np.array([int(digest[:IMAGE_KEY_HEX_DIGITS], 16) for digest in hashes], dtype=np.int64)


def augmented_images(
    images: tf.Tensor, keys: tf.Tensor, augment: AugmentParams, seed: int, epoch: tf.Tensor, order: tf.Tensor
) -> tf.data.Dataset:
    """Images in `order`, each augmented with the seed of (seed, epoch, its key: `image_keys`), in parallel."""

    def load(index: tf.Tensor) -> tf.Tensor:
        image = tf.cast(tf.gather(images, index), tf.float32)
        key = tf.gather(keys, index)
        return tf.image.grayscale_to_rgb(augment_image(image, element_seed(seed, epoch, key), augment))

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
    keys = tf.constant(image_keys(split.hashes))
    labels = tf.constant(one_hot(split.labels, class_count))

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order = epoch_order(len(split), seed, epoch)
        pixels = augmented_images(images, keys, augment, seed, epoch, order)
        targets = tf.data.Dataset.from_tensor_slices(tf.gather(labels, order))
        return tf.data.Dataset.zip((pixels, targets)).batch(batch_size)

    return prefetched(tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch))


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

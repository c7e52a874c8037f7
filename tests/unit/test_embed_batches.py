"""The embed stage never runs the base on a batch of one image (tasks/training/embed.py): oneDNN computes
one image with other kernels than two or more, chosen by the processor, so a split whose last batch
held one image got other float bits on another machine, and a fresh clone's dvc.lock differed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tasks.model.classifier import build_base, build_embedder
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.model.fused import folded_inference_function
from tasks.training.embed import embed

SIZE = 75  # InceptionV3's smallest input: a cheap base
EMBEDDING = EmbeddingSpec("bright", ("mixed2", "mixed5", "mixed7", "mixed10"))


def batches_of(images: np.ndarray, batch_size: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size)


def test_a_lone_last_image_is_run_beside_a_copy_of_itself() -> None:
    seen: list[int] = []

    def step(batch: tf.Tensor) -> tf.Tensor:
        seen.append(int(batch.shape[0]))
        return tf.reduce_sum(batch, axis=[1, 2])  # one row per image, from that image alone

    images = np.arange(3 * 4 * 4 * 2, dtype=np.float32).reshape(3, 4, 4, 2)
    embedded = embed(step, batches_of(images, 2), 3, "test", show_progress=False)
    assert seen == [2, 2]  # the last batch (one image) ran as two
    np.testing.assert_array_equal(embedded, images.sum(axis=(1, 2)))
    assert embedded.dtype == np.float32


@pytest.mark.slow
def test_an_image_gets_the_same_bits_alone_at_the_end_of_a_split_as_inside_a_batch() -> None:
    """On the frozen InceptionV3 (weights none), the image of a split's one-image last batch is embedded
    bit for bit as it is inside a larger batch (without the rule, oneDNN differs here by about 1e-9)."""
    base = build_base(SIZE, "none", Path("."), seed=0)
    step = folded_inference_function(build_embedder(base, SIZE, EMBEDDING))
    images = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    in_one_batch = embed(step, batches_of(images, 3), 3, "test", show_progress=False)
    last_alone = embed(step, batches_of(images, 2), 3, "test", show_progress=False)
    np.testing.assert_array_equal(last_alone, in_one_batch)

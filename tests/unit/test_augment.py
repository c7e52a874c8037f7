"""The augmentation: it changes images, keeps shape and range, and depends only on its seed."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tasks.augment import augment_image, element_seed
from tasks.config import AugmentParams

REFERENCE = AugmentParams(
    rotation_degrees=20,
    zoom=0.05,
    width_shift=0.05,
    height_shift=0.05,
    shear_degrees=0.05,
    horizontal_flip=True,
    fill_mode="nearest",
)
NOTHING = AugmentParams(
    rotation_degrees=0,
    zoom=0,
    width_shift=0,
    height_shift=0,
    shear_degrees=0,
    horizontal_flip=False,
    fill_mode="nearest",
)


def stroke_image(size: int = 48) -> tf.Tensor:
    """White square with an asymmetric dark stroke, float in [0, 255], shape (size, size, 1)."""
    image = np.full((size, size, 1), 255.0, dtype=np.float32)
    image[10:14, 5:40, 0] = 0.0
    image[14:40, 30:34, 0] = 40.0
    return tf.constant(image)


def augmented(params: AugmentParams, seed: tuple[int, int, int]) -> np.ndarray:
    return augment_image(stroke_image(), element_seed(*seed), params).numpy()


def test_reference_augmentation_changes_images_and_keeps_shape_and_range() -> None:
    outputs = [augmented(REFERENCE, (42, 0, index)) for index in range(8)]
    original = stroke_image().numpy()
    for output in outputs:
        assert output.shape == original.shape
        assert output.dtype == np.float32
        assert output.min() >= 0.0 and output.max() <= 255.0
        assert not np.allclose(output, original)
    # "nearest" filling keeps the white paper at the borders.
    assert all(output[0, 0, 0] > 200 for output in outputs)
    assert len({output.tobytes() for output in outputs}) == len(outputs)


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    assert np.array_equal(augmented(REFERENCE, (42, 3, 7)), augmented(REFERENCE, (42, 3, 7)))
    assert not np.array_equal(augmented(REFERENCE, (42, 3, 7)), augmented(REFERENCE, (42, 4, 7)))
    assert not np.array_equal(augmented(REFERENCE, (42, 3, 7)), augmented(REFERENCE, (43, 3, 7)))


def test_no_augmentation_is_the_identity() -> None:
    assert np.allclose(augmented(NOTHING, (1, 2, 3)), stroke_image().numpy(), atol=1e-3)


def test_flip_alone_mirrors_the_image() -> None:
    flip_only = NOTHING.model_copy(update={"horizontal_flip": True})
    original = stroke_image().numpy()
    outputs = [augmented(flip_only, (5, 0, index)) for index in range(16)]
    flipped = [output for output in outputs if not np.allclose(output, original, atol=1e-3)]
    assert 0 < len(flipped) < len(outputs)
    assert all(np.allclose(output, original[:, ::-1], atol=1e-3) for output in flipped)


@pytest.mark.parametrize("fill_mode", ["reflect", "wrap", "constant"])
def test_every_fill_mode_runs(fill_mode: str) -> None:
    params = REFERENCE.model_copy(update={"fill_mode": fill_mode})
    output = augmented(params, (1, 1, 1))
    assert output.shape == (48, 48, 1)


def test_augmentation_runs_inside_a_parallel_tf_data_map() -> None:
    images = tf.constant(np.stack([stroke_image().numpy()] * 6))
    dataset = tf.data.Dataset.range(6).map(
        lambda index: augment_image(tf.gather(images, index), element_seed(9, 0, index), REFERENCE),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    batched = np.stack([item.numpy() for item in dataset])
    direct = np.stack([augmented(REFERENCE, (9, 0, index)) for index in range(6)])
    assert np.allclose(batched, direct, atol=1e-4)

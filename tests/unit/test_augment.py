"""The augmentation: it changes images, keeps shape and range, and depends only on its seed."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tasks.training.augment import PIXEL_MAX, augment_image, element_seed, uniform
from tasks.workspace.params_model import AugmentParams

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


# A 3 x 8 image whose columns are 10, 20, ..., 80, shifted by exactly 2 pixels, left then right.
# The horizontal shift is uniform(-1, 1) * width_shift * width, its draw the 5th stream (index 4) of the
# seed; width_shift is chosen per seed so that the shift is exactly 2 pixels. The transform maps output
# pixel x to input x + shift: a positive shift moves the content left.
COLUMNS = np.arange(10.0, 90.0, 10.0, dtype=np.float32)
SHIFTED = {
    # seed (7, 0, 0) draws +0.93: content moves 2 px left, two columns are filled on the right.
    ((7, 0, 0), "constant"): [30, 40, 50, 60, 70, 80, 255, 255],  # white paper
    ((7, 0, 0), "nearest"): [30, 40, 50, 60, 70, 80, 80, 80],  # the edge column repeated
    ((7, 0, 0), "wrap"): [30, 40, 50, 60, 70, 80, 10, 20],  # the left edge comes round
    ((7, 0, 0), "reflect"): [30, 40, 50, 60, 70, 80, 80, 70],  # mirrored about the edge: d c b a | a b c d
    # seed (7, 0, 1) draws -0.84: content moves 2 px right, two columns are filled on the left.
    ((7, 0, 1), "constant"): [255, 255, 10, 20, 30, 40, 50, 60],
    ((7, 0, 1), "nearest"): [10, 10, 10, 20, 30, 40, 50, 60],
    ((7, 0, 1), "wrap"): [70, 80, 10, 20, 30, 40, 50, 60],
    ((7, 0, 1), "reflect"): [20, 10, 10, 20, 30, 40, 50, 60],
}


@pytest.mark.parametrize(("seed", "fill_mode"), list(SHIFTED))
def test_a_two_pixel_shift_moves_the_content_and_fills_by_mode(seed: tuple[int, int, int], fill_mode: str) -> None:
    element = element_seed(*seed)
    draw = float(uniform(element, 4, -1.0, 1.0))
    assert abs(draw) > 0.8 and (draw > 0) == (seed[2] == 0)  # the setup above: a large draw of known sign
    width = len(COLUMNS)
    params = NOTHING.model_copy(update={"width_shift": 2.0 / (abs(draw) * width), "fill_mode": fill_mode})
    image = tf.constant(np.tile(COLUMNS, (3, 1))[..., np.newaxis])
    output = augment_image(image, element, params).numpy()[..., 0]
    assert output == pytest.approx(np.tile(SHIFTED[(seed, fill_mode)], (3, 1)), abs=1e-3)


def ink_centre_x(image: np.ndarray) -> float:
    """Column of the centre of mass of the ink (darkness) of a (height, width, 1) image."""
    ink = PIXEL_MAX - image[..., 0]
    return float((ink.sum(axis=0) * np.arange(ink.shape[1])).sum() / ink.sum())


def left_mark() -> np.ndarray:
    """48 x 48 white paper with ink only on the left: the ink centre is at column 8, mirrored it is 39."""
    image = np.full((48, 48, 1), PIXEL_MAX, dtype=np.float32)
    image[12:36, 4:13, 0] = 0.0
    return image


def test_signature_preset_jitters_but_never_mirrors() -> None:
    preset = AugmentParams()
    assert preset.preset == "signature" and preset.horizontal_flip is False
    image = left_mark()
    assert ink_centre_x(image) == pytest.approx(8.0)
    outputs = [augment_image(tf.constant(image), element_seed(3, 0, index), preset).numpy() for index in range(32)]
    # Shift <= 0.02 * 48 = 0.96 px, zoom <= 2 %, rotation <= 2 degrees: the ink stays within 2 px of column 8
    # (a mirrored image would have it at 39), and every image is moved a little.
    assert all(abs(ink_centre_x(output) - 8.0) < 2.0 for output in outputs)
    assert not any(np.allclose(output, image, atol=1.0) for output in outputs)
    # The reference preset does mirror some of the same draws.
    reference = AugmentParams(preset="reference")
    mirrored = [
        ink_centre_x(augment_image(tf.constant(image), element_seed(3, 0, index), reference).numpy()) > 30
        for index in range(32)
    ]
    assert 0 < sum(mirrored) < 32


def test_signature_preset_fills_with_white_paper_at_the_borders_only() -> None:
    """On an all-ink image, what comes from outside the image is exactly white (constant fill, not the
    nearest black edge); the jitter is at most a few pixels, so the inside stays black."""
    preset = AugmentParams()
    assert preset.fill_mode == "constant"
    black = tf.zeros((48, 48, 1))
    outputs = [augment_image(black, element_seed(3, 0, index), preset).numpy()[..., 0] for index in range(8)]
    assert all(output[3:-3, 3:-3].max() == 0.0 for output in outputs)
    assert any((output == PIXEL_MAX).any() for output in outputs)
    nearest = preset.model_copy(update={"fill_mode": "nearest"})
    assert all(augment_image(black, element_seed(3, 0, index), nearest).numpy().max() == 0.0 for index in range(8))


def test_same_seed_same_pixels_with_the_signature_preset() -> None:
    preset = AugmentParams()
    assert np.array_equal(augmented(preset, (42, 3, 7)), augmented(preset, (42, 3, 7)))
    assert not np.array_equal(augmented(preset, (42, 3, 7)), augmented(preset, (42, 3, 8)))


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


def test_an_images_views_depend_on_its_pixels_not_on_its_position() -> None:
    """Issue 26: a view is seeded by the image's prepared-PNG hash, so the same image gets the same views
    wherever it sits in its split (an enrolled reference alone, or among every training image after the
    next `dvc repro`), and two images with different hashes get different ones."""
    from tasks.training.input_pipeline import augmented_images, image_keys

    base = stroke_image().numpy()
    images = np.stack([base, np.roll(base, 3, axis=1), np.roll(base, 5, axis=0)]).astype(np.uint8)
    hashes = ("0123456789abcdef" * 4, "fedcba9876543210" * 4, "00ff" * 16)
    epoch = tf.constant(1_000_000, tf.int64)

    def views(order: list[int]) -> list[np.ndarray]:
        chosen = tf.constant(images[order])
        keys = tf.constant(image_keys([hashes[index] for index in order]))
        dataset = augmented_images(chosen, keys, REFERENCE, 42, epoch, tf.range(len(order), dtype=tf.int64))
        return [item.numpy() for item in dataset]

    in_order, reversed_order, alone = views([0, 1, 2]), views([2, 1, 0]), views([2])
    for position, index in enumerate([2, 1, 0]):
        np.testing.assert_allclose(reversed_order[position], in_order[index], atol=1e-4)
    np.testing.assert_allclose(alone[0], in_order[2], atol=1e-4)
    twin = views([0, 0])
    np.testing.assert_allclose(twin[0], twin[1], atol=1e-4)  # same pixels, same hash: same view
    assert image_keys(hashes[:2])[0] != image_keys(hashes[:2])[1]

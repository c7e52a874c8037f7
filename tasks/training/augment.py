"""The reference recipe's augmentation as one random affine transform per image, on tf.data.

Keras ImageDataGenerator drew a rotation, a shear, a zoom per axis, a shift and a flip for each
image and applied them as one affine transform with "nearest" filling. This does the same with
TensorFlow's stateless random ops and one `ImageProjectiveTransformV3` per image (the op behind
Keras' RandomRotation / RandomZoom / RandomTranslation layers), so it runs inside parallel
`tf.data` maps, never in Python loops, and an image's augmentation depends only on its seed:
the same seed gives the same pixels, whatever the order or parallelism of the pipeline.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tasks.workspace.params_model import AugmentParams

PIXEL_MAX = 255.0
FLIP_PROBABILITY = 0.5


def uniform(seed: tf.Tensor, index: int, low: float, high: float) -> tf.Tensor:
    """One stateless uniform draw in [low, high), the `index`-th stream of `seed`."""
    stream = tf.stack([seed[0], seed[1] + index])
    return tf.random.stateless_uniform([], stream, minval=low, maxval=high, dtype=tf.float32)


def affine_matrix(seed: tf.Tensor, params: AugmentParams, height: int, width: int) -> tf.Tensor:
    """The 3x3 output-to-input pixel mapping for one image, drawn from `seed` (int64 pair)."""
    angle = uniform(seed, 0, -1.0, 1.0) * math.radians(params.rotation_degrees)
    shear = uniform(seed, 1, -1.0, 1.0) * math.radians(params.shear_degrees)
    zoom_x = uniform(seed, 2, 1.0 - params.zoom, 1.0 + params.zoom)
    zoom_y = uniform(seed, 3, 1.0 - params.zoom, 1.0 + params.zoom)
    shift_x = uniform(seed, 4, -1.0, 1.0) * params.width_shift * width
    shift_y = uniform(seed, 5, -1.0, 1.0) * params.height_shift * height
    flip = uniform(seed, 6, 0.0, 1.0) < FLIP_PROBABILITY if params.horizontal_flip else tf.constant(False)
    mirror = tf.where(flip, -1.0, 1.0)
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    zero, one = tf.constant(0.0), tf.constant(1.0)

    def matrix(*rows: list[tf.Tensor]) -> tf.Tensor:
        return tf.stack([tf.stack([tf.cast(value, tf.float32) for value in row]) for row in rows])

    to_centre = matrix([one, zero, -centre_x], [zero, one, -centre_y], [zero, zero, one])
    from_centre = matrix([one, zero, centre_x + shift_x], [zero, one, centre_y + shift_y], [zero, zero, one])
    rotation = matrix([tf.cos(angle), -tf.sin(angle), zero], [tf.sin(angle), tf.cos(angle), zero], [zero, zero, one])
    shearing = matrix([one, -tf.sin(shear), zero], [zero, tf.cos(shear), zero], [zero, zero, one])
    zooming = matrix([zoom_x * mirror, zero, zero], [zero, zoom_y, zero], [zero, zero, one])
    return from_centre @ rotation @ shearing @ zooming @ to_centre


def augment_image(image: tf.Tensor, seed: tf.Tensor, params: AugmentParams) -> tf.Tensor:
    """Augment one float image (height, width, channels) in [0, 255]; same shape and range out."""
    height, width = int(image.shape[0]), int(image.shape[1])
    transform = tf.reshape(affine_matrix(seed, params, height, width), [-1])[:8]
    transformed = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.constant([height, width], dtype=tf.int32),
        fill_value=tf.constant(PIXEL_MAX),
        interpolation="BILINEAR",
        fill_mode=params.fill_mode.upper(),
    )[0]
    return tf.clip_by_value(transformed, 0.0, PIXEL_MAX)


def element_seed(base_seed: int, epoch: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """The seed of one image in one epoch (or one cached view): a pure function of the three."""
    return tf.stack(
        [tf.cast(base_seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64), tf.cast(index, tf.int64) * 16]
    )

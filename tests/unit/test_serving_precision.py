"""The model registered for serving computes in float32, whatever precision it was trained in."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tasks.model.keras_files import float32_copy


def nested_classifier() -> keras.Model:
    """A base model nested in a classifier with a float32 output, like the real one, but small."""
    image = keras.Input((16, 16, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(image))
    base = keras.Model(image, features, name="base")
    outer = keras.Input((16, 16, 3))
    logits = keras.layers.Dense(3, name="head")(base(outer))
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(outer, outputs, name="classifier")


def policies(model: keras.Model) -> set[str]:
    names = set()
    for layer in model.layers:
        names.add(layer.dtype_policy.name)
        if isinstance(layer, keras.Model):
            names |= policies(layer)
    return names


@pytest.fixture
def mixed_model_file(tmp_path: Path) -> Path:
    """A classifier saved by a mixed-precision (float16, as on a GPU) run."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = nested_classifier()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = tmp_path / "classifier.keras"
    model.save(path)
    return path


def test_a_mixed_precision_model_loads_with_its_float16_policies(mixed_model_file: Path) -> None:
    """The problem: loading in a float32 process keeps the saved float16 layer policies."""
    assert "mixed_float16" in policies(keras.models.load_model(mixed_model_file, compile=False))


def test_the_float32_copy_computes_in_float32_with_the_same_weights(mixed_model_file: Path) -> None:
    mixed = keras.models.load_model(mixed_model_file, compile=False)
    copy = float32_copy(mixed)
    assert policies(copy) == {"float32"}
    assert all(weight.dtype == "float32" for weight in copy.weights)
    for expected, actual in zip(mixed.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(expected, actual)
    pixels = np.random.default_rng(1).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    reference = nested_classifier()
    reference.set_weights(mixed.get_weights())
    np.testing.assert_allclose(copy.predict(pixels, verbose=0), reference.predict(pixels, verbose=0), rtol=1e-6)

"""FusedAdam: Keras' Adam update through TensorFlow's one-kernel implementation."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tasks.optimizer import FusedAdam


def trained_weights(optimizer: keras.optimizers.Optimizer, steps: int = 30) -> list[np.ndarray]:
    """A small dense classifier after `steps` updates on fixed random data, from fixed initial weights."""
    generator = np.random.default_rng(0)
    features = generator.normal(size=(64, 12)).astype(np.float32)
    labels = keras.utils.to_categorical(generator.integers(0, 3, 64), 3)
    model = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(16, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=1)),
            keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(seed=2)),
        ]
    )
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")
    model.fit(features, labels, batch_size=8, epochs=steps // 8, shuffle=False, verbose=0)
    return model.get_weights()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_fused_adam_follows_keras_adam(amsgrad: bool) -> None:
    expected = trained_weights(keras.optimizers.Adam(learning_rate=0.01, amsgrad=amsgrad))
    actual = trained_weights(FusedAdam(learning_rate=0.01, amsgrad=amsgrad))
    initial = trained_weights(keras.optimizers.SGD(learning_rate=0.0))
    for before, keras_adam, fused in zip(initial, expected, actual, strict=True):
        assert not np.allclose(before, fused)  # it did train
        np.testing.assert_allclose(fused, keras_adam, rtol=1e-4, atol=1e-5)


def test_fused_adam_runs_the_fused_kernel() -> None:
    variable = keras.Variable(np.ones(4, dtype=np.float32))
    optimizer = FusedAdam(learning_rate=0.1)
    optimizer.build([variable])
    apply = tf.function(lambda gradient: optimizer.apply([gradient], [variable]))
    gradient = tf.constant([1.0, -1.0, 0.5, 0.0])
    graph = apply.get_concrete_function(gradient).graph
    assert "ResourceApplyAdam" in {operation.type for operation in graph.get_operations()}
    apply(gradient)
    # The first Adam step moves each weight by lr * sign(gradient) (bias-corrected m / sqrt(v)).
    np.testing.assert_allclose(variable.numpy(), [0.9, 1.1, 0.9, 1.0], atol=1e-5)

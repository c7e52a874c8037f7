"""FusedAdam: Keras' Adam update through TensorFlow's one-kernel implementation."""

from __future__ import annotations

from pathlib import Path

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


def schedule() -> keras.optimizers.schedules.LearningRateSchedule:
    return keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=5, decay_rate=0.5)


@pytest.mark.parametrize(
    "options",
    [
        {"learning_rate": 0.01},
        {"learning_rate": 0.01, "amsgrad": True},  # Keras' own update
        {"learning_rate": 0.01, "weight_decay": 0.05, "clipnorm": 0.1},
        {"learning_rate": "schedule", "epsilon": 1e-4, "beta_1": 0.8},
    ],
)
def test_fused_adam_follows_keras_adam(options: dict[str, object]) -> None:
    if options["learning_rate"] == "schedule":
        options = {**options, "learning_rate": schedule()}
    expected = trained_weights(keras.optimizers.Adam(**options))
    actual = trained_weights(FusedAdam(**options))
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


def test_fused_adam_keeps_keras_adams_variables_for_resumed_checkpoints() -> None:
    """Checkpoints store the optimizer's variables by position: both optimizers must have the same."""
    weights = [keras.Variable(np.zeros((3, 2), dtype=np.float32)), keras.Variable(np.zeros(2, dtype=np.float32))]
    fused, plain = FusedAdam(), keras.optimizers.Adam()
    fused.build(weights)
    plain.build(weights)

    def layout(optimizer: keras.optimizers.Optimizer) -> list[tuple[str, tuple[int, ...]]]:
        return [(variable.path.split("/", 1)[1], tuple(variable.shape)) for variable in optimizer.variables]

    assert layout(fused) == layout(plain)


def test_a_model_compiled_with_fused_adam_saves_and_loads(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=FusedAdam(learning_rate=0.003), loss="mse")
    model.fit(np.ones((8, 4), np.float32), np.zeros((8, 2), np.float32), verbose=0)
    model.save(tmp_path / "compiled.keras")
    loaded = keras.models.load_model(tmp_path / "compiled.keras")
    assert isinstance(loaded.optimizer, FusedAdam)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.003)

"""Device policy: mixed precision and distribution strategy chosen from what is visible."""

from __future__ import annotations

import pytest

from tasks.device import DevicePolicy, apply_policy, choose_policy


@pytest.mark.parametrize(
    ("gpus", "mixed", "distribute", "expected"),
    [
        (0, "auto", "auto", DevicePolicy("cpu", 0, False, "default")),
        (1, "auto", "auto", DevicePolicy("gpu", 1, True, "default")),
        (4, "auto", "auto", DevicePolicy("gpu", 4, True, "mirrored")),
        (4, "off", "none", DevicePolicy("gpu", 4, False, "default")),
        (0, "on", "mirrored", DevicePolicy("cpu", 0, True, "mirrored")),
    ],
)
def test_choose_policy(gpus: int, mixed: str, distribute: str, expected: DevicePolicy) -> None:
    assert choose_policy(gpus, mixed, distribute) == expected


def test_apply_policy_sets_keras_dtype_policy_and_strategy() -> None:
    import keras
    import tensorflow as tf

    try:
        strategy = apply_policy(DevicePolicy("cpu", 0, True, "mirrored"))
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        assert isinstance(strategy, tf.distribute.MirroredStrategy)
        strategy = apply_policy(DevicePolicy("cpu", 0, False, "default"))
        assert keras.mixed_precision.global_policy().name == "float32"
        assert not isinstance(strategy, tf.distribute.MirroredStrategy)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_jit_compile_is_honoured_only_without_deterministic_kernels() -> None:
    """Keras silently drops `jit_compile` while op determinism is on, so asking for XLA must turn it off."""
    import keras
    from tensorflow.python.framework import config as tensorflow_config

    from tasks.train import seed_everything

    def compiled_with_xla() -> bool:
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer="adam", loss="mse", jit_compile=True)
        return bool(model.jit_compile)

    try:
        seed_everything(1, deterministic_ops=False)
        assert not tensorflow_config.is_op_determinism_enabled()
        assert compiled_with_xla()
        seed_everything(1, deterministic_ops=True)
        assert tensorflow_config.is_op_determinism_enabled()
        assert not compiled_with_xla()
    finally:
        tensorflow_config.enable_op_determinism()  # what every other training in this process expects

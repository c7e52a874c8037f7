"""Hardware policy: which device, whether mixed precision, which tf.distribute strategy.

`choose_policy` is a pure function of what is visible and what the parameters ask, so it is
tested on a CPU machine; `apply_policy` turns the choice into TensorFlow settings.
"""

from __future__ import annotations

from dataclasses import dataclass

MIXED_POLICY = "mixed_float16"
FLOAT_POLICY = "float32"


@dataclass(frozen=True)
class DevicePolicy:
    """What the training run uses."""

    device: str
    gpu_count: int
    mixed_precision: bool
    strategy: str


def choose_policy(gpu_count: int, mixed_precision: str, distribute: str) -> DevicePolicy:
    """Pick device, precision and strategy.

    Mixed precision `auto` is on for GPUs (tensor cores) and off on CPUs, where float16 is slower.
    Distribution `auto` uses MirroredStrategy only when several GPUs are visible.
    """
    use_mixed = gpu_count > 0 if mixed_precision == "auto" else mixed_precision == "on"
    mirrored = distribute == "mirrored" or (distribute == "auto" and gpu_count > 1)
    return DevicePolicy(
        device="gpu" if gpu_count else "cpu",
        gpu_count=gpu_count,
        mixed_precision=use_mixed,
        strategy="mirrored" if mirrored else "default",
    )


def visible_gpu_count() -> int:
    """How many GPUs TensorFlow sees."""
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def apply_policy(policy: DevicePolicy):  # -> tf.distribute.Strategy
    """Set Keras' global dtype policy and return the distribution strategy to build models under."""
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(MIXED_POLICY if policy.mixed_precision else FLOAT_POLICY)
    if policy.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()

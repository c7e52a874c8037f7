"""Hardware policy: which device, whether mixed precision, which tf.distribute strategy.

`choose_policy` is a pure function of what is visible and what the parameters ask, so it is
tested on a CPU machine; `apply_policy` turns the choice into TensorFlow settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

GPU_MIXED_POLICY = "mixed_float16"
CPU_MIXED_POLICY = "mixed_bfloat16"
FLOAT_POLICY = "float32"
CPU_INFO_FILE = Path("/proc/cpuinfo")
# CPU flags of native bfloat16 arithmetic: AVX-512 BF16 (AMD Zen 4, Intel), AMX (Intel Xeon 4th
# generation on), BF16 (Arm v8.6, e.g. AWS Graviton 3), as Linux lists them in /proc/cpuinfo.
NATIVE_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPU_FLAG_FIELDS = ("flags", "Features")  # the x86 and the Arm name of the field


@dataclass(frozen=True)
class DevicePolicy:
    """What the training run uses."""

    device: str
    gpu_count: int
    mixed_precision: bool
    strategy: str


def choose_policy(gpu_count: int, mixed_precision: str, distribute: str) -> DevicePolicy:
    """Pick device, precision and strategy.

    Mixed precision `auto` is on for GPUs (tensor cores) and off on CPUs; `on` on a CPU means
    bfloat16 (see `apply_policy`).
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


def dtype_policy_name(policy: DevicePolicy) -> str:
    """Keras' dtype policy for `policy`: float16 on GPUs; bfloat16 on CPUs, which have no fast float16
    but do run bfloat16 natively when they have AVX-512 BF16 or AMX (2x the frozen base's images/s
    on the development machine, bench/README.md); float32 without mixed precision."""
    if not policy.mixed_precision:
        return FLOAT_POLICY
    return GPU_MIXED_POLICY if policy.device == "gpu" else CPU_MIXED_POLICY


def cpu_has_native_bfloat16(cpu_info_file: Path = CPU_INFO_FILE) -> bool:
    """Whether the CPU lists a native bfloat16 instruction set (False where that cannot be read)."""
    try:
        text = cpu_info_file.read_text(errors="replace")
    except OSError:
        return False
    flags = {
        flag
        for line in text.splitlines()
        if line.startswith(CPU_FLAG_FIELDS)
        for flag in line.split(":", 1)[-1].split()
    }
    return bool(flags & NATIVE_BFLOAT16_FLAGS)


def apply_policy(policy: DevicePolicy):  # -> tf.distribute.Strategy
    """Set Keras' global dtype policy and return the distribution strategy to build models under."""
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(dtype_policy_name(policy))
    if policy.mixed_precision and policy.device == "cpu" and not cpu_has_native_bfloat16():
        logger.warning(
            "train.mixed_precision is on, but this CPU has no native bfloat16 instructions (%s): "
            "bfloat16 is emulated and slower than float32 here. Set train.mixed_precision: off.",
            " or ".join(sorted(NATIVE_BFLOAT16_FLAGS)),
        )
    if policy.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()

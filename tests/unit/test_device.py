"""Device policy: mixed precision and distribution strategy chosen from what is visible."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.training.device import DevicePolicy, apply_policy, choose_policy, cpu_has_native_bfloat16, dtype_policy_name


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


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (DevicePolicy("gpu", 1, True, "default"), "mixed_float16"),
        (DevicePolicy("cpu", 0, True, "default"), "mixed_bfloat16"),
        (DevicePolicy("gpu", 1, False, "default"), "float32"),
        (DevicePolicy("cpu", 0, False, "default"), "float32"),
    ],
)
def test_mixed_precision_is_float16_on_gpus_and_bfloat16_on_cpus(policy: DevicePolicy, expected: str) -> None:
    assert dtype_policy_name(policy) == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),
        ("fpu sse2 avx2 amx_bf16 amx_tile", True),
        ("fpu sse2 avx2 avx512f avx512_vnni", False),
        ("Features\t: fp asimd sve bf16 i8mm", True),
        ("Features\t: fp asimd evtstrm aes", False),
    ],
)
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str, expected: bool) -> None:
    cpu_info = tmp_path / "cpuinfo"
    line = flags if flags.startswith("Features") else f"flags\t\t: {flags}"
    cpu_info.write_text(f"processor\t: 0\nmodel name\t: Some CPU\n{line}\n\nprocessor\t: 1\n")
    assert cpu_has_native_bfloat16(cpu_info) is expected
    assert cpu_has_native_bfloat16(tmp_path / "missing") is False


@pytest.mark.parametrize(("native", "warned"), [(False, True), (True, False)])
def test_bfloat16_on_a_cpu_without_it_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, native: bool, warned: bool
) -> None:
    import keras

    import tasks.training.device

    monkeypatch.setattr(tasks.training.device, "cpu_has_native_bfloat16", lambda: native)
    try:
        with caplog.at_level("WARNING", logger="tasks.training.device"):
            apply_policy(DevicePolicy("cpu", 0, True, "default"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert ("no native bfloat16" in caplog.text) is warned


def test_apply_policy_sets_keras_dtype_policy_and_strategy() -> None:
    import keras
    import tensorflow as tf

    try:
        strategy = apply_policy(DevicePolicy("cpu", 0, True, "mirrored"))
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
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

    from tasks.training.train_keras import seed_everything

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

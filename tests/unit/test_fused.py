"""The folded inference graph: the same outputs as Keras, with the BatchNorms gone from the graph."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tasks.model.classifier import BLOCKS_NAME, build_base, build_classifier, build_embedder
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.model.fused import folded_graph, folded_inference_function, inference_function
from tasks.model.keras_head import HEAD_OUTPUT, HeadSpec

SIZE = 75
EMBEDDING = EmbeddingSpec("bright", ("mixed2", "mixed5", "mixed7", "mixed10"))
CLASSES = 5


def randomise_batch_norms(model: keras.Model, seed: int) -> None:
    """Non-trivial moving statistics and offsets, so a wrong fold cannot pass by accident."""
    generator = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            randomise_batch_norms(layer, seed + 1)
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(generator.normal(0.0, 0.2, shape))
            layer.moving_variance.assign(generator.uniform(0.3, 3.0, shape))
            if layer.center:
                layer.beta.assign(generator.normal(0.0, 0.2, shape))
            if layer.scale:
                layer.gamma.assign(generator.uniform(0.5, 1.5, shape))


def pixels(count: int, size: int = SIZE, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(7).uniform(0, 255, (count, size, size, channels)).astype(np.float32)


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.abs(expected - actual).max() / np.abs(expected).max())


def graph_op_types(function: object, size: int = SIZE, channels: int = 3) -> set[str]:
    import tensorflow as tf

    concrete = function.get_concrete_function(tf.TensorSpec((None, size, size, channels), tf.float32))
    return {operation.type for operation in concrete.graph.get_operations()}


@pytest.fixture(scope="module")
def inception_embedder() -> keras.Model:
    base = build_base(SIZE, "none", Path("."), seed=3)
    randomise_batch_norms(base, seed=3)
    return build_embedder(base, SIZE, EMBEDDING)


def test_folded_inception_embedder_matches_keras_without_batch_norm_ops(inception_embedder: keras.Model) -> None:
    batch = pixels(6)
    expected = inference_function(inception_embedder)(batch).numpy()
    folded = folded_inference_function(inception_embedder)
    actual = folded(batch).numpy()
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert relative_error(expected, actual) < 1e-4
    operations = graph_op_types(folded)
    assert "Conv2D" in operations
    # Keras' BatchNorm in inference mode is rsqrt(var + eps) * gamma ...; folded, none of it is left.
    assert not operations & {"Rsqrt", "FusedBatchNormV3", "FusedBatchNorm"}
    assert graph_op_types(inference_function(inception_embedder)) & {"Rsqrt", "FusedBatchNormV3"}


def test_folded_classifier_features_match_keras_with_the_head(inception_embedder: keras.Model) -> None:
    """The scorer's model: base, pooling, standardisation, dense and dropout (identity at inference)."""
    generator = np.random.default_rng(1)
    mean, variance = generator.normal(size=3872).astype(np.float32), generator.uniform(0.5, 2, 3872).astype(np.float32)
    base = inception_embedder.get_layer(BLOCKS_NAME)  # the base's pooled blocks: what build_embedder reads
    classifier = build_classifier(base, SIZE, HeadSpec(CLASSES, 16, 0.5, 0, mean, variance), EMBEDDING)
    features = keras.Model(classifier.input, classifier.get_layer(HEAD_OUTPUT).input)
    batch = pixels(3)
    expected = features(batch, training=False).numpy()
    assert relative_error(expected, folded_inference_function(features)(batch).numpy()) < 1e-4


def test_folded_graph_under_bfloat16_stays_close_and_returns_float32() -> None:
    try:
        keras.mixed_precision.set_global_policy("float32")
        reference = build_embedder(build_base(SIZE, "none", Path("."), seed=4), SIZE, EMBEDDING)
        randomise_batch_norms(reference, seed=4)
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        mixed = build_embedder(build_base(SIZE, "none", Path("."), seed=4), SIZE, EMBEDDING)
        mixed.set_weights(reference.get_weights())
        batch = pixels(4)
        actual = folded_inference_function(mixed)(batch).numpy()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    expected = inference_function(reference)(batch).numpy()
    assert actual.dtype == np.float32
    assert np.corrcoef(expected.ravel(), actual.ravel())[0, 1] > 0.999
    assert relative_error(expected, actual) < 0.05


def small_model(branch_reads_conv: bool, conv_activation: str | None, bias: bool) -> keras.Model:
    """Conv -> BN -> ReLU, optionally with the conv's output also read by a second branch."""
    inputs = keras.Input((12, 12, 3))
    convolved = keras.layers.Conv2D(4, 3, padding="same", activation=conv_activation, use_bias=bias)(inputs)
    normalised = keras.layers.BatchNormalization(scale=True)(convolved)
    outputs = keras.layers.Activation("relu")(normalised)
    if branch_reads_conv:
        outputs = keras.layers.Concatenate()([outputs, keras.layers.MaxPooling2D(1)(convolved)])
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(outputs))
    randomise_batch_norms(model, seed=5)
    return model


@pytest.mark.parametrize(
    ("branch_reads_conv", "conv_activation", "bias", "folds"),
    [
        (False, None, False, True),
        (False, None, True, True),  # the conv's own bias folds too
        (True, None, False, False),  # another layer reads the conv's output before BatchNorm
        (False, "relu", False, False),  # a nonlinearity between conv and BatchNorm
    ],
)
def test_only_exact_folds_are_made(
    branch_reads_conv: bool, conv_activation: str | None, bias: bool, folds: bool
) -> None:
    model = small_model(branch_reads_conv, conv_activation, bias)
    if bias:
        conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
        conv.bias.assign(np.linspace(-1, 1, 4))
    batch = pixels(2, size=12)
    folded = folded_inference_function(model)
    assert relative_error(model(batch, training=False).numpy(), folded(batch).numpy()) < 1e-5
    assert ("Rsqrt" not in graph_op_types(folded, size=12)) is folds


def test_a_model_with_an_unknown_layer_runs_through_keras() -> None:
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.LayerNormalization()(keras.layers.Dense(4)(inputs)))
    assert folded_graph(model) is None
    batch = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(folded_inference_function(model)(batch).numpy(), model(batch).numpy(), rtol=1e-6)


def conv_block(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """Conv (no bias) -> BatchNorm -> ReLU, the InceptionV3 block."""
    convolved = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    return keras.layers.Activation("relu")(keras.layers.BatchNormalization(scale=False)(convolved))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_precision_model_loaded_in_float32_runs_folded(tmp_path: Path, policy: str) -> None:
    """A saved model loads with its Functional wrappers in the global policy (float32 in a fresh
    process) and its layers in their saved mixed policy: the folded graph must cast like Keras."""
    try:
        keras.mixed_precision.set_global_policy(policy)
        inner_inputs = keras.Input((12, 12, 3))
        inner = keras.Model(inner_inputs, conv_block(conv_block(inner_inputs)), name="inner")
        inputs = keras.Input((12, 12, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(inner(inputs))  # the float32 input meets a conv
        model = keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(pooled))
        randomise_batch_norms(model, seed=6)
        model.save(tmp_path / "mixed.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loaded = keras.models.load_model(tmp_path / "mixed.keras")
    batch = pixels(4, size=12)
    expected = loaded.predict(batch, verbose=0)
    actual = folded_inference_function(loaded)(batch).numpy()
    assert actual.dtype == np.float32
    assert relative_error(expected, actual) < 0.05


def test_a_conv_whose_output_is_also_a_model_output_is_not_folded() -> None:
    inputs = keras.Input((12, 12, 3))
    convolved = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    normalised = keras.layers.BatchNormalization()(convolved)
    model = keras.Model(inputs, [normalised, convolved])
    randomise_batch_norms(model, seed=8)
    batch = pixels(2, size=12)
    for expected, actual in zip(model(batch, training=False), folded_graph(model)(batch), strict=True):
        assert relative_error(expected.numpy(), actual.numpy()) < 1e-5


def test_a_conv_called_twice_is_not_folded() -> None:
    inputs = keras.Input((12, 12, 3))
    shared = keras.layers.Conv2D(4, 3, padding="same")
    first = keras.layers.BatchNormalization()(shared(inputs))
    second = shared(keras.layers.MaxPooling2D(1)(inputs))
    model = keras.Model(inputs, keras.layers.Concatenate()([first, second]))
    randomise_batch_norms(model, seed=9)
    batch = pixels(2, size=12)
    assert relative_error(model(batch, training=False).numpy(), folded_inference_function(model)(batch).numpy()) < 1e-5


def test_a_raw_keras_op_in_the_graph_runs_through_keras() -> None:
    inputs = keras.Input((12, 12, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(conv_block(inputs / 255.0)))
    assert folded_graph(model) is None
    batch = pixels(2, size=12)
    assert relative_error(model(batch, training=False).numpy(), folded_inference_function(model)(batch).numpy()) < 1e-6


def test_a_layer_called_with_training_true_runs_in_inference_mode() -> None:
    inputs = keras.Input((12, 12, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(conv_block(inputs))
    model = keras.Model(inputs, keras.layers.Dropout(0.5, seed=1)(pooled, training=True))
    randomise_batch_norms(model, seed=10)
    batch = pixels(3, size=12)
    folded = folded_inference_function(model)
    np.testing.assert_allclose(folded(batch).numpy(), folded(batch).numpy())
    assert relative_error(model(batch, training=False).numpy(), folded(batch).numpy()) < 1e-5


def small_conv_model() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(conv_block(inputs)))
    randomise_batch_norms(model, seed=5)
    return model


def test_the_private_keras_api_the_fold_relies_on_is_still_there() -> None:
    """Fails on a Keras release that renames or removes what the graph walk uses, so the change is
    seen (and the fold reviewed) instead of silently running the slower fallback."""
    import inspect

    from tasks.model.fused import PRIVATE_KERAS_API

    model = small_conv_model()
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    for name in PRIVATE_KERAS_API:
        assert any(hasattr(item, name) for item in (model, conv, norm, norm.input)), name
    assert norm.input._keras_history.operation is conv
    assert "operation_fn" in inspect.signature(model._run_through_graph).parameters
    assert folded_graph(model) is not None


def broken_history(layer: object, model: object) -> None:
    raise AttributeError("'KerasTensor' object has no attribute '_keras_history'")


def broken_convolution(conv: object, norm: object) -> object:
    def convolve(inputs: object, **_: object) -> object:
        raise TypeError("_run_through_graph() got an unexpected keyword argument 'operation_fn'")

    return convolve


@pytest.mark.parametrize(
    ("name", "replacement"), [("folded_pair", broken_history), ("folded_convolution", broken_convolution)]
)
def test_a_changed_private_api_falls_back_to_the_plain_keras_model(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str, replacement: object
) -> None:
    """Stands for a Keras release that changed the private graph API, failing while the folded
    graph is built (a renamed attribute) or traced (another call signature): the function still
    computes the model's outputs, through Keras, and says why in the log."""
    import tasks.model.fused

    model = small_conv_model()
    monkeypatch.setattr(tasks.model.fused, name, replacement)
    with caplog.at_level("WARNING", logger="tasks.model.fused"):
        function = folded_inference_function(model)
    assert "plain Keras model" in caplog.text
    batch = pixels(2)
    np.testing.assert_allclose(function(batch).numpy(), model(batch, training=False).numpy(), rtol=1e-5, atol=1e-6)
    # The fold turns conv (no bias) + BatchNorm into conv + BiasAdd; the fallback has no BiasAdd.
    assert "BiasAdd" not in graph_op_types(function)
    monkeypatch.undo()
    assert "BiasAdd" in graph_op_types(folded_inference_function(model))

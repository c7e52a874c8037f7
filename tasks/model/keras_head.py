"""The classifier's trained head as Keras layers: its shape, its layer names, and its arrays in and out.

The head takes the frozen base's pooled embedding: [Standardise] -> [Dense(relu)] ->
Dropout -> Dense(softmax). `tasks.model.classifier` puts it on the base; `tasks.model.head` holds the same arrays
without Keras.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from tasks.model.head import HeadWeights, head_weights

HEAD_STANDARDISE = "head_standardise"
HEAD_DENSE = "head_dense"
HEAD_DROPOUT = "head_dropout"
HEAD_OUTPUT = "head_output"
HEAD_LAYERS = (HEAD_DENSE, HEAD_OUTPUT)


@dataclass(frozen=True)
class HeadSpec:
    """The head's shape, and the embedding statistics it standardises with (None: no standardisation).

    `dense_units` 0 is a linear head (softmax regression on the embedding); above 0, a hidden
    Dense(relu) layer of that many units comes first.
    """

    class_count: int
    dense_units: int
    dropout: float
    seed: int = 0
    feature_mean: np.ndarray | None = None
    feature_variance: np.ndarray | None = None


def add_head(features: keras.KerasTensor, spec: HeadSpec) -> keras.KerasTensor:
    """[Standardise] -> [Dense(relu)] -> Dropout -> Dense(softmax), the output in float32 under mixed precision.

    Standardising the embedding with the training images' mean and variance (a fixed Keras
    Normalization layer, saved with the model) is what lets a head learn on a randomly initialised
    base (`model.weights: none`), whose embeddings are tiny; with ImageNet weights it is harmless.
    """
    if spec.feature_mean is not None:
        features = keras.layers.Normalization(
            mean=spec.feature_mean, variance=spec.feature_variance, name=HEAD_STANDARDISE
        )(features)
    hidden = features
    if spec.dense_units:
        hidden = keras.layers.Dense(
            spec.dense_units,
            activation="relu",
            name=HEAD_DENSE,
            kernel_initializer=keras.initializers.GlorotUniform(seed=spec.seed),
        )(features)
    hidden = keras.layers.Dropout(spec.dropout, seed=spec.seed + 1, name=HEAD_DROPOUT)(hidden)
    return keras.layers.Dense(
        spec.class_count,
        activation="softmax",
        dtype="float32",
        name=HEAD_OUTPUT,
        kernel_initializer=keras.initializers.GlorotUniform(seed=spec.seed + 2),
    )(hidden)


def head_weights_of(model: keras.Model) -> HeadWeights:
    """The head arrays of a Keras head or classifier (`add_head`'s layers), for `tasks.model.head`."""
    names = {layer.name for layer in model.layers}
    mean = variance = hidden_kernel = hidden_bias = None
    if HEAD_STANDARDISE in names:
        normalisation = model.get_layer(HEAD_STANDARDISE)
        mean = np.asarray(normalisation.mean).reshape(-1)
        variance = np.asarray(normalisation.variance).reshape(-1)
    if HEAD_DENSE in names:
        hidden_kernel, hidden_bias = model.get_layer(HEAD_DENSE).get_weights()
    output_kernel, output_bias = model.get_layer(HEAD_OUTPUT).get_weights()
    return head_weights(output_kernel, output_bias, mean, variance, hidden_kernel, hidden_bias)


def build_head(spec: HeadSpec, feature_count: int) -> keras.Model:
    """The head alone, on embeddings of `feature_count` features (trained in cached mode), with the
    classifier's layer names."""
    inputs = keras.Input((feature_count,), name="embedding")
    return keras.Model(inputs, add_head(inputs, spec), name="head")


def copy_head_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy the trained head layers from `source` to the layers of the same name in `target`."""
    present = {layer.name for layer in source.layers}
    for name in HEAD_LAYERS:
        if name in present:
            target.get_layer(name).set_weights(source.get_layer(name).get_weights())


def embedding_statistics(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance of (..., features) embeddings, in float64 then float32."""
    flat = embeddings.reshape(-1, embeddings.shape[-1]).astype(np.float64)
    return flat.mean(axis=0).astype(np.float32), flat.var(axis=0).astype(np.float32)

"""The frozen base as one lean inference graph: BatchNorm folded into its convolution, no Keras layer overhead.

Every InceptionV3 block is Conv2D (no bias) -> BatchNormalization -> ReLU. Frozen and in inference
mode, the BatchNorm is an affine map per channel, so it folds exactly into the convolution's
kernel and a bias: `conv(x, W) * s + (beta - mean * s)` with `s = gamma / sqrt(var + eps)`. The
graph is then Conv2D + BiasAdd + ReLU, which TensorFlow's grappler fuses into one oneDNN (or cuDNN)
kernel, and nothing is cast back and forth per layer under mixed precision (Keras runs BatchNorm
in float32 there). Measured on the development CPU at 150 px (bench/README.md): 12% more images/s
in float32 and a third of the tracing time; 2x with bfloat16 on a CPU that has native bfloat16.

The model's own Keras graph is walked as it is: only folded pairs are replaced, every other layer
runs its own maths, with Keras' dtype casts and in inference mode. In float32 the outputs equal
Keras' to float rounding (tested); under mixed precision they differ by the rounding of the
reduced-precision convolution, as Keras' own do. A model holding an operation this module does
not know (any layer outside `SUPPORTED_LAYERS`, a raw `keras.ops` node) runs through Keras
unchanged.

Private Keras API, kept on purpose (DESIGN section 7): the graph walk reads `_inbound_nodes`,
`_outbound_nodes`, `_keras_history` and calls `Functional._run_through_graph`, because Keras has
no public way to run a functional graph with some operations replaced; the gain on the users'
paths (embedding in train, evaluate and the pyfunc) is measured in bench/README.md. If a Keras
release changes any of them, building or tracing the folded graph fails, and
`folded_inference_function` falls back to the plain Keras model with a warning (tested), while
`tests/unit/test_fused.py` fails on the changed API so the change is seen, not just survived.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

logger = logging.getLogger(__name__)

# Layers whose maths in inference mode is a pure function of their input (no masks, no state).
SUPPORTED_LAYERS: tuple[type, ...] = (
    keras.layers.InputLayer,
    keras.layers.Activation,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.Concatenate,
    keras.layers.Rescaling,
    keras.layers.Normalization,
    keras.layers.Dense,
    keras.layers.Dropout,
    keras.layers.Conv2D,
    keras.layers.BatchNormalization,
)
Operation = Callable[..., Any]
# The private Keras attributes the graph walk uses; a test checks they still exist.
PRIVATE_KERAS_API = ("_inbound_nodes", "_outbound_nodes", "_keras_history", "_run_through_graph")
# What a changed private API raises while the folded graph is built or traced.
CHANGED_API_ERRORS = (AttributeError, TypeError, KeyError, IndexError)
CHANNEL_AXES = (-1, 3)  # the channels axis of NHWC tensors, as BatchNormalization may name it


def folded_pair(layer: keras.layers.Layer, model: keras.Model) -> keras.layers.Conv2D | None:
    """The Conv2D that `layer` (a BatchNormalization of `model`) can fold into, or None.

    Foldable when the BatchNorm normalises the channel axis of a plain, linear Conv2D that is
    called once, whose output feeds nothing else and is not itself an output of the model.
    """
    if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
        return None
    producer = layer.input._keras_history.operation
    linear_conv = (
        type(producer) is keras.layers.Conv2D
        and producer.activation is keras.activations.linear
        and producer.data_format == "channels_last"
        and producer.groups == 1
        and len(producer._inbound_nodes) == 1
        and len(producer._outbound_nodes) == 1
        and all(output is not producer.output for output in model.outputs)
    )
    return producer if linear_conv and layer.axis in CHANNEL_AXES else None


def folded_convolution(conv: keras.layers.Conv2D, norm: keras.layers.BatchNormalization) -> Operation:
    """conv followed by norm, as one convolution with a bias, computing in the conv's compute dtype."""
    import tensorflow as tf

    mean = np.asarray(norm.moving_mean, dtype=np.float64)
    scale = 1.0 / np.sqrt(np.asarray(norm.moving_variance, dtype=np.float64) + norm.epsilon)
    if norm.scale:
        scale = scale * np.asarray(norm.gamma, dtype=np.float64)
    shift = np.asarray(norm.beta, dtype=np.float64) if norm.center else 0.0
    conv_bias = np.asarray(conv.bias, dtype=np.float64) if conv.use_bias else 0.0
    dtype = conv.compute_dtype
    kernel = tf.constant((np.asarray(conv.kernel, dtype=np.float64) * scale).astype(np.float32), dtype=dtype)
    bias = tf.constant(((conv_bias - mean) * scale + shift).astype(np.float32), dtype=dtype)
    strides, padding, dilations = conv.strides, conv.padding.upper(), conv.dilation_rate

    def convolve(inputs: Any, **_: Any) -> Any:
        # Cast like Keras' autocast: a model loaded in another process runs its Functional wrapper
        # in the global policy (float32) and each layer in its own saved (mixed) policy.
        pixels = tf.cast(inputs, kernel.dtype)
        return tf.nn.bias_add(tf.nn.conv2d(pixels, kernel, strides, padding, dilations=dilations), bias)

    return convolve


def in_compute_dtype(layer: keras.layers.Layer, inputs: Any) -> Any:
    """Floating tensors in `inputs` cast to the layer's compute dtype, as Keras' `__call__` does."""
    import tensorflow as tf

    if not layer.autocast:
        return inputs

    def cast(tensor: Any) -> Any:
        floating = isinstance(tensor, tf.Tensor) and tensor.dtype.is_floating
        return tf.cast(tensor, layer.compute_dtype) if floating else tensor

    return keras.tree.map_structure(cast, inputs)


def layer_call(layer: keras.layers.Layer) -> Operation:
    """The layer in inference mode. A layer without weights runs its bare `call` (its maths, without
    Keras' per-call bookkeeping, which is most of the tracing time) on inputs cast as Keras casts
    them; one with weights goes through Keras, which also casts its variables under mixed precision.
    Either way `training` is False, whatever the graph recorded (Keras' `model(x, training=False)`
    overrides it too)."""
    if layer.weights:
        return lambda *args, **kwargs: layer(*args, **{**kwargs, "training": False})
    takes_training = "training" in inspect.signature(layer.call).parameters

    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs = {name: value for name, value in kwargs.items() if value is not None and name != "training"}
        if takes_training:
            kwargs["training"] = False
        return layer.call(*in_compute_dtype(layer, args), **kwargs)

    return call


def folded_operations(model: keras.Model) -> dict[int, Operation] | None:
    """What each operation of `model` (by id) runs in the folded graph; None when one is not supported."""
    operations: dict[int, Operation] = {}
    for layer in model.layers:
        if (conv := folded_pair(layer, model)) is not None:
            operations[id(conv)] = folded_convolution(conv, layer)
            operations[id(layer)] = lambda inputs, **_: inputs
    for operation in model.operations:
        if id(operation) in operations:
            continue
        if isinstance(operation, keras.Model):
            nested = folded_graph(operation)
            if nested is None:
                return None
            operations[id(operation)] = lambda inputs, run=nested, **_: run(inputs)
        elif isinstance(operation, SUPPORTED_LAYERS):
            operations[id(operation)] = layer_call(operation)
        else:
            logger.info(
                "%s: %s (%s) is not foldable; running the model through Keras",
                model.name,
                operation.name,
                type(operation).__name__,
            )
            return None
    return operations


def folded_graph(model: keras.Model) -> Callable[[Any], Any] | None:
    """`model`'s graph with every foldable BatchNorm folded, as a plain function; None if unsupported."""
    if not hasattr(model, "_run_through_graph") or len(model.inputs) != 1:
        return None
    operations = folded_operations(model)
    if operations is None:
        return None

    def run(inputs: Any) -> Any:
        return model._run_through_graph(inputs, operation_fn=lambda operation: operations[id(operation)])

    return run


def pixel_signature(model: keras.Model) -> list[Any]:
    """The traced functions' input: float32 pixels of the model's input shape, any batch size."""
    import tensorflow as tf

    return [tf.TensorSpec(shape=(None, *model.input_shape[1:]), dtype=tf.float32)]


def inference_function(model: keras.Model) -> Callable[[Any], Any]:
    """`model` in inference mode as one traced function for any batch size of float pixels:
    traced once, not once per call or per dataset (as `keras.Model.predict` does)."""
    import tensorflow as tf

    return tf.function(lambda batch: model(batch, training=False), input_signature=pixel_signature(model))


def folded_inference_function(model: keras.Model) -> Callable[[Any], Any]:
    """`model` in inference mode as one traced function of float32 pixels, BatchNorms folded.

    Outputs (one tensor, or a list for a model with several) are float32 whatever the compute
    dtype. Falls back to the Keras model itself (traced the same way) when the graph holds a layer
    this module does not know.
    """
    import tensorflow as tf

    try:
        graph = folded_graph(model)
        if graph is None:
            return inference_function(model)
        function = tf.function(
            lambda batch: tf.nest.map_structure(lambda output: tf.cast(output, tf.float32), graph(batch)),
            input_signature=pixel_signature(model),
        )
        function.get_concrete_function()  # trace now, so a changed Keras API shows here, not mid-run
    except CHANGED_API_ERRORS as error:
        logger.warning(
            "%s: folding BatchNorm failed (%s: %s), probably a Keras change to its private graph API; "
            "running the plain Keras model instead (correct, about 12%% slower)",
            model.name,
            type(error).__name__,
            error,
        )
        return inference_function(model)
    return function

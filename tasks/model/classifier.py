"""The classifier: a frozen InceptionV3 base and a small trained head (the reference recipe, corrected).

Inputs are float pixels in [0, 255] (grey replicated to three channels); a Rescaling layer maps
them to InceptionV3's [-1, 1] inside the model, so every caller feeds the same thing and no caller
can forget it (the reference rescaled to [0, 1]). With `model.ink: dark` that is exactly
`keras.applications.inception_v3.preprocess_input` (x / 127.5 - 1); with `bright` it is the negative
(1 - x / 127.5): ink high, paper low, which the verifier measured better on (bench/README.md).
The embedding is the global average of each InceptionV3 block in `model.pooled_layers`,
concatenated (`EmbeddingSpec`). The base always runs with `training=False`, so its BatchNorm layers
stay in inference mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.model.embedding_spec import EmbeddingSpec
from tasks.model.fused import folded_inference_function
from tasks.model.head import HeadWeights
from tasks.model.keras_head import HEAD_DENSE, HEAD_OUTPUT, HeadSpec, add_head
from tasks.workspace.errors import WeightsError
from tasks.workspace.params_data import INCEPTION_MIN_SIZE
from tasks.workspace.params_model import weights_file

# The head's layers are in tasks.model.keras_head, the reproducible file and the float32 copy in
# tasks.model.keras_files.
PIXEL_SCALE = 127.5
IMAGENET_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/" + IMAGENET_WEIGHTS_FILE
)
BLOCKS_NAME = "inception_v3_blocks"
POOL_NAME = "pool"
PREPROCESS_NAME = "inception_preprocess"
KERNEL_SEED_STRIDE = 10_000
# The last frozen base built in this process, by what built it (`frozen_base`).
KEPT_BASES: dict[tuple[object, ...], keras.Model] = {}
# model.ink -> (scale, offset) of the Rescaling layer that maps [0, 255] pixels to [-1, 1].
INK_RESCALING = {"dark": (1.0 / PIXEL_SCALE, -1.0), "bright": (-1.0 / PIXEL_SCALE, 1.0)}


def imagenet_hint() -> str:
    """How to supply the ImageNet weights on a machine that cannot download them."""
    return (
        f"Download {IMAGENET_WEIGHTS_URL} on a machine with internet access and either put it at "
        f"~/.keras/models/{IMAGENET_WEIGHTS_FILE} (Keras then finds it offline) or set model.weights to its "
        "path in params.yaml. To train without pretrained weights, set model.weights: none."
    )


def resolve_weights(weights: str, root: Path) -> str | None:
    """`model.weights` as Keras takes it: None, 'imagenet', or an existing file's absolute path."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = weights_file(weights, root)
    if path is None or not path.is_file():
        raise WeightsError(f"model.weights: {path} does not exist. {imagenet_hint()}")
    return str(path)


def reinitialise_kernels(model: keras.Model, seed: int) -> None:
    """Give every kernel a Glorot-uniform value drawn from (seed, its position) alone.

    Keras draws the seeds of unseeded initializers from Python's global `random`, which other
    threads of the process (Prefect's log and event workers, for one) also draw from; explicit
    seeds make a randomly initialised base the same in every run.
    """
    kernels = [weight for weight in model.weights if weight.path.endswith("kernel")]
    for position, kernel in enumerate(kernels):
        initializer = keras.initializers.GlorotUniform(seed=seed * KERNEL_SEED_STRIDE + position)
        kernel.assign(initializer(kernel.shape, dtype=kernel.dtype))


def build_base(image_size: int, weights: str, root: Path, seed: int = 0) -> keras.Model:
    """InceptionV3 without its top, every layer frozen; with `weights: none`, initialised from `seed`."""
    if image_size < INCEPTION_MIN_SIZE:
        raise ValueError(f"prepare.image_size is {image_size}; InceptionV3 needs at least {INCEPTION_MIN_SIZE}")
    resolved = resolve_weights(weights, root)
    try:
        base = keras.applications.InceptionV3(
            include_top=False, weights=resolved, input_shape=(image_size, image_size, 3)
        )
    except Exception as error:  # Keras raises a bare Exception for a failed download.
        raise WeightsError(
            f"InceptionV3 weights '{weights}' could not be loaded ({error}). {imagenet_hint()}"
        ) from error
    if resolved is None:
        reinitialise_kernels(base, seed)
    base.trainable = False
    return base


def weights_identity(weights: str, root: Path) -> tuple[object, ...]:
    """What says a base built from `weights` now is the one built earlier: the weights file's path, size,
    modification time and inode (a file replaced under the same name differs), or the name itself for a
    base without a file (`none`: seeded; `imagenet`: Keras's own checked download)."""
    resolved = resolve_weights(weights, root)
    if resolved is None or resolved == "imagenet":
        return (weights,)
    status = Path(resolved).stat()
    return (resolved, status.st_size, status.st_mtime_ns, status.st_ino)


def frozen_base(image_size: int, weights: str, root: Path, seed: int = 0) -> keras.Model:
    """The frozen base of `build_base`, built once per process for the same request and weights file: the
    pipeline flow runs the embed and package stages in one process, and package's base is embed's (its
    weights digest is still checked against the embed stage's record). Nothing may train it; the online
    training mode builds its own.

    Either way Keras's session is cleared first, and what is built next in it is what a fresh process
    builds (`dvc repro package` and the pipeline flow write the same file): a new base gets the layer names
    of a fresh process; a kept one is given back with its dtype policy object as the global one, so the
    layers built on it share that object as every layer of a fresh process shares its (Keras numbers
    shared objects in the saved config)."""
    key = (image_size, weights, root, seed, weights_identity(weights, root))
    keras.backend.clear_session(free_memory=False)  # Keras's state only: a full garbage collection is 0.45 s here
    kept = KEPT_BASES.get(key)
    if kept is not None:
        keras.config.set_dtype_policy(kept.dtype_policy)
        return kept
    base = build_base(image_size, weights, root, seed)
    KEPT_BASES.clear()  # one base at a time: each holds the full InceptionV3 weights
    KEPT_BASES[key] = base
    return base


def build_embedder(base: keras.Model, image_size: int, embedding: EmbeddingSpec) -> keras.Model:
    """Pixels in [0, 255] to the embedding `embedding` describes (what the cached mode stores): each
    pooled block's global average, concatenated in the listed order."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    scale, offset = INK_RESCALING[embedding.ink]
    scaled = keras.layers.Rescaling(scale, offset=offset, name=PREPROCESS_NAME)(inputs)
    block_outputs = [base.get_layer(name).output for name in embedding.pooled_layers]
    if len(block_outputs) == 1:  # a one-element output list is not a valid functional model output
        blocks = keras.Model(base.input, block_outputs[0], name=BLOCKS_NAME)
        pooled = keras.layers.GlobalAveragePooling2D(name=POOL_NAME)(blocks(scaled, training=False))
    else:
        blocks = keras.Model(base.input, block_outputs, name=BLOCKS_NAME)
        pooled = keras.layers.Concatenate(name=POOL_NAME)(
            [
                keras.layers.GlobalAveragePooling2D(name=f"{POOL_NAME}_{name}")(output)
                for name, output in zip(embedding.pooled_layers, blocks(scaled, training=False), strict=True)
            ]
        )
    return keras.Model(inputs, pooled, name="embedder")


def build_classifier(base: keras.Model, image_size: int, spec: HeadSpec, embedding: EmbeddingSpec) -> keras.Model:
    """The full classifier: preprocessing, frozen base, pooling, head."""
    embedder = build_embedder(base, image_size, embedding)
    return keras.Model(embedder.input, add_head(embedder.output, spec), name="signature_classifier")


def classifier_with_head(
    base: keras.Model, image_size: int, head: HeadWeights, dropout: float, seed: int, embedding: EmbeddingSpec
) -> keras.Model:
    """The full classifier whose head holds `head`'s arrays (`tasks.model.head`, what the train stage wrote):
    what `register` packages. Its logits are `head.logits` of the base's embeddings."""
    spec = HeadSpec(
        head.class_count,
        head.hidden_units,
        dropout,
        seed,
        head.mean if head.standardises else None,
        head.variance if head.standardises else None,
    )
    classifier = build_classifier(base, image_size, spec, embedding)
    if head.hidden_units:
        classifier.get_layer(HEAD_DENSE).set_weights([head.hidden_kernel, head.hidden_bias])
    classifier.get_layer(HEAD_OUTPUT).set_weights([head.output_kernel, head.output_bias])
    return classifier


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of a model's weights, to key caches on the exact base that produced them."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ScorerOutputs:
    """What one pass of the classifier gives per image: its logits and its base embedding."""

    logits: np.ndarray  # (n, classes), float64, pre-softmax
    embeddings: np.ndarray  # (n, features), float32, the pooled output of the frozen base


class LogitScorer:
    """The classifier's pre-softmax outputs (what temperature scaling divides), in float64, and the
    frozen base's pooled embedding of each image (what the writer-dependent verifier scores).

    The softmax layer is kept in the saved model for users of the bare `.keras` file; the logits
    are recomputed from its input with the same kernel and bias.
    """

    def __init__(self, classifier: keras.Model) -> None:
        import tensorflow as tf

        output_layer = classifier.get_layer(HEAD_OUTPUT)
        self.features = keras.Model(classifier.input, [classifier.get_layer(POOL_NAME).output, output_layer.input])
        self.kernel, self.bias = (np.asarray(weight, dtype=np.float64) for weight in output_layer.get_weights())
        # One traced graph for every batch size: `keras.Model.predict` builds a tf.data pipeline on
        # every call, a fixed cost that dominates when a service scores a few images at a time.
        grey = tf.TensorSpec(shape=(None, *classifier.input_shape[1:-1]), dtype=tf.uint8)
        self.forward = folded_inference_function(self.features)
        # Grey bytes in, replicated to three float channels inside the graph: 12x less memory to
        # fill in NumPy per image, which at 299 px costs as much as a tenth of the forward pass.
        self.forward_grey = tf.function(
            lambda batch: self.forward(tf.repeat(tf.cast(batch, tf.float32)[..., tf.newaxis], 3, axis=-1)),
            input_signature=[grey],
        )

    def __call__(self, pixels: np.ndarray | Iterable[Any], batch_size: int = 32) -> np.ndarray:
        """Logits of float RGB pixels in [0, 255] (an array, or a tf.data dataset of image batches)."""
        return self.outputs(pixels, batch_size).logits

    def outputs(self, pixels: np.ndarray | Iterable[Any], batch_size: int = 32) -> ScorerOutputs:
        """Logits and embeddings of float RGB pixels in [0, 255] (an array, or a dataset of batches).

        Both run the same folded graph, so the logits calibration is fitted on (evaluate's, from a
        dataset) are the ones served (the pyfunc's, from arrays)."""
        if isinstance(pixels, np.ndarray):
            return self.batched(self.forward, np.asarray(pixels, dtype=np.float32), batch_size)
        return self.outputs_of_batches(self.forward, pixels)

    def of_grey(self, images: np.ndarray, batch_size: int = 32) -> ScorerOutputs:
        """Logits and embeddings of 8-bit grey images (n, size, size), as the prepare stage writes them."""
        if images.dtype != np.uint8:  # a silent cast would wrap or truncate other pixel values
            raise TypeError(f"grey images must be uint8 (0-255), got {images.dtype}")
        return self.batched(self.forward_grey, images, batch_size)

    def batched(self, forward: Callable[[np.ndarray], Any], inputs: np.ndarray, batch_size: int) -> ScorerOutputs:
        """Outputs of `inputs` run through a traced `forward`, `batch_size` at a time."""
        return self.outputs_of_batches(
            forward, (inputs[start : start + batch_size] for start in range(0, len(inputs), batch_size))
        )

    def outputs_of_batches(self, forward: Callable[[Any], Any], batches: Iterable[Any]) -> ScorerOutputs:
        """Logits and embeddings of every batch run through a traced `forward`, in order (no batches: none)."""
        embeddings, features = [], []
        for batch in batches:
            pooled, hidden = forward(batch)
            embeddings.append(pooled.numpy())
            features.append(hidden.numpy())
        if not features:
            return ScorerOutputs(
                self.logits(np.zeros((0, self.kernel.shape[0]))),
                np.zeros((0, self.features.output_shape[0][-1]), np.float32),
            )
        return ScorerOutputs(self.logits(np.concatenate(features)), np.concatenate(embeddings).astype(np.float32))

    def logits(self, features: np.ndarray) -> np.ndarray:
        """The output layer's pre-softmax values, in float64, from its input features."""
        return np.asarray(features, dtype=np.float64) @ self.kernel + self.bias

"""The identification head as arrays: what the train stage writes and what evaluate applies with NumPy.

Whatever trained it (the ridge verifier's closed form, or Adam for the `linear` and `mlp` heads), the
head on the embedding is [standardise] -> [Dense(relu)] -> Dense: a few matrices. Storing them
as arrays (an .npz, no pickle) lets the light stages score embeddings without TensorFlow; `register`
folds the same arrays into the Keras classifier it packages (`tasks.model.classifier.classifier_with_head`) and
checks that it gives the same scores.

Standardisation follows Keras' Normalization layer: (x - mean) / max(sqrt(variance), epsilon).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.model.verifier import WriterVerifier
from tasks.workspace.errors import TrainingDataError
from tasks.workspace.files import UNREADABLE_NPZ_ERRORS, save_npz

KERAS_EPSILON = 1e-7  # keras.config.epsilon(): the floor of a Normalization layer's standard deviation
HEAD_ARRAYS = ("mean", "variance", "hidden_kernel", "hidden_bias", "output_kernel", "output_bias")
EMPTY = np.zeros((0,), dtype=np.float32)  # an absent part (no standardisation, no hidden layer)


@dataclass(frozen=True)
class HeadWeights:
    """The head's arrays; `mean`/`variance` empty when it does not standardise, `hidden_*` empty when
    it is linear. `logits` are its pre-softmax outputs."""

    mean: np.ndarray
    variance: np.ndarray
    hidden_kernel: np.ndarray
    hidden_bias: np.ndarray
    output_kernel: np.ndarray
    output_bias: np.ndarray

    @property
    def class_count(self) -> int:
        return int(self.output_kernel.shape[1])

    @property
    def hidden_units(self) -> int:
        return int(self.hidden_kernel.shape[1]) if self.hidden_kernel.size else 0

    @property
    def standardises(self) -> bool:
        return bool(self.mean.size)

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, classes) pre-softmax outputs for (n, features) embeddings, computed in float32 as Keras does."""
        values = np.asarray(embeddings, dtype=np.float32)
        if self.standardises:
            values = (values - self.mean) / np.maximum(np.sqrt(self.variance), np.float32(KERAS_EPSILON))
        if self.hidden_units:
            values = np.maximum(values @ self.hidden_kernel + self.hidden_bias, np.float32(0.0))
        return (values @ self.output_kernel + self.output_bias).astype(np.float32)


def head_weights(
    output_kernel: np.ndarray,
    output_bias: np.ndarray,
    mean: np.ndarray | None = None,
    variance: np.ndarray | None = None,
    hidden_kernel: np.ndarray | None = None,
    hidden_bias: np.ndarray | None = None,
) -> HeadWeights:
    """A head from its parts (None for an absent one), every array in float32."""

    def part(values: np.ndarray | None) -> np.ndarray:
        return EMPTY if values is None else np.asarray(values, dtype=np.float32)

    return HeadWeights(
        part(mean), part(variance), part(hidden_kernel), part(hidden_bias), part(output_kernel), part(output_bias)
    )


def head_from_verifier(verifier: WriterVerifier) -> HeadWeights:
    """The ridge head (`model.head: ridge`): the verifier's writer-dependent linear models themselves, so
    identification and verification read the same scores (the head's logits are the verifier's scores)."""
    return head_weights(verifier.kernel, verifier.bias, verifier.mean, np.square(verifier.scale))


def save_head(head: HeadWeights, path: Path) -> None:
    """Write the head's arrays to an uncompressed .npz, atomically (equal arrays give equal bytes)."""
    save_npz({name: getattr(head, name) for name in HEAD_ARRAYS}, path)


def load_head(path: Path) -> HeadWeights:
    """Read a head written by `save_head`, with an error that names the file and the fix."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return HeadWeights(*(np.asarray(arrays[name], dtype=np.float32) for name in HEAD_ARRAYS))
    except UNREADABLE_NPZ_ERRORS as error:
        raise TrainingDataError(
            f"{path} is not a head written by the train stage ({error}). Rerun it: `dvc repro train`."
        ) from error

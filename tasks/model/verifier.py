"""Writer-dependent verification on writer-independent features: is this really writer W's signature?

The field verifies a claim with one model per writer trained on the frozen embeddings (Hafemann
et al., SigNet: a linear model per writer, that writer's genuine signatures against the other
writers' genuine signatures as random forgeries, no skilled forgeries in training). Here each
writer's model is a class-balanced ridge classifier (a least-squares linear SVM): targets +1 for
the writer's training embeddings (clean and augmented views), -1 for every other writer's,
positives and negatives weighing half each, an unpenalised bias, and an L2 penalty
`regularization` on the weights. The score of the claim "W signed this" is W's decision value;
the `calibrate` stage fits one threshold on it.

All writers share one Gram matrix of the standardised embeddings, so fitting W writers costs one
pass over the data and W small solves, instead of W passes (scikit-learn's `RidgeClassifier`
with sample weights, which gives the same weights and is what the tests compare against).

Optionally (`whitening` > 0) the standardised embeddings are first whitened by the pooled
within-writer covariance of the training embeddings (within-class covariance normalisation, as in
speaker verification): directions in which one writer's own signatures vary are shrunk, directions
in which they agree are stretched. It is fitted on training genuine signatures only, is linear, and
is folded into the kernel, so the stored verifier and everything that scores with it are unchanged.
`whitening` is the ridge added to the covariance, relative to its mean eigenvalue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg

from tasks.workspace.errors import VerifierError
from tasks.workspace.files import UNREADABLE_NPZ_ERRORS, save_npz

MINIMUM_SCALE = 1e-6  # a feature constant over the training embeddings is left unscaled
VERIFIER_ARRAYS = ("mean", "scale", "kernel", "bias")


@dataclass(frozen=True)
class WriterVerifier:
    """One linear model per writer on standardised embeddings: score = ((x - mean) / scale) @ kernel + bias."""

    mean: np.ndarray  # (features,)
    scale: np.ndarray  # (features,)
    kernel: np.ndarray  # (features, writers)
    bias: np.ndarray  # (writers,)

    @property
    def writer_count(self) -> int:
        return int(self.kernel.shape[1])

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, writers) decision values of the claim "writer w signed image i", in float64."""
        standardised = (np.asarray(embeddings, dtype=np.float64) - self.mean) / self.scale
        return standardised @ self.kernel + self.bias


def standardisation(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation, in float64 (constant features keep scale 1)."""
    values = np.asarray(embeddings, dtype=np.float64)
    scale = values.std(axis=0)
    return values.mean(axis=0), np.where(scale < MINIMUM_SCALE, 1.0, scale)


def class_weights(labels: np.ndarray, writer: int) -> tuple[float, float]:
    """Per-sample weights of the writer's positives and of the negatives: each side sums to 1/2."""
    positives = int(np.sum(labels == writer))
    return 0.5 / positives, 0.5 / (len(labels) - positives)


def within_writer_whitening(standardised: np.ndarray, labels: np.ndarray, strength: float) -> np.ndarray:
    """The symmetric (features, features) matrix (C + strength * mean eigenvalue * I)^(-1/2), C the
    pooled within-writer covariance of the rows of `standardised` grouped by `labels`."""
    centred = np.empty_like(standardised)
    for writer in np.unique(labels):
        rows = labels == writer
        centred[rows] = standardised[rows] - standardised[rows].mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(labels))
    eigenvalues = np.maximum(eigenvalues, 0.0)
    ridge = strength * max(float(eigenvalues.mean()), MINIMUM_SCALE)
    return (eigenvectors / np.sqrt(eigenvalues + ridge)) @ eigenvectors.T


def fit_writer_verifier(
    embeddings: np.ndarray, labels: np.ndarray, writer_count: int, regularization: float, whitening: float = 0.0
) -> WriterVerifier:
    """Fit every writer's balanced ridge classifier on (n, features) embeddings labelled 0..writers-1.

    For writer w, with sample weights s (positives and negatives half each) and targets t in
    {+1, -1}, minimises sum_i s_i (x_i . k + b - t_i)^2 + regularization * |k|^2. The weighted
    Gram matrix is the all-negatives one plus a correction from w's own (few) samples. With
    `whitening` > 0 the features are `within_writer_whitening`'s transform of the standardised
    embeddings, and the kernel is mapped back so that it applies to the standardised embeddings.
    """
    labels = np.asarray(labels)
    if writer_count < 2 or len(np.unique(labels)) < writer_count:
        raise VerifierError(
            f"a writer-dependent verifier needs training embeddings of every writer and at least 2 writers; "
            f"got {len(np.unique(labels))} of {writer_count}"
        )
    mean, scale = standardisation(embeddings)
    standardised = (np.asarray(embeddings, dtype=np.float64) - mean) / scale
    transform = within_writer_whitening(standardised, labels, whitening) if whitening > 0 else None
    if transform is not None:
        standardised = standardised @ transform
    design = np.hstack([standardised, np.ones((len(labels), 1))])
    gram = design.T @ design
    column_sums = design.sum(axis=0)
    penalty = np.full(design.shape[1], regularization)
    penalty[-1] = 0.0  # the bias is not penalised
    kernel = np.empty((design.shape[1] - 1, writer_count))
    bias = np.empty(writer_count)
    for writer in range(writer_count):
        positive_weight, negative_weight = class_weights(labels, writer)
        own = design[labels == writer]
        weighted_gram = negative_weight * gram + (positive_weight - negative_weight) * (own.T @ own)
        # sum_i s_i t_i x_i = (positive_weight + negative_weight) * own_sum - negative_weight * all_sum
        right = (positive_weight + negative_weight) * own.sum(axis=0) - negative_weight * column_sums
        # Symmetric positive definite (a positive penalty on every weight, a positive weight on every
        # sample for the bias), so a Cholesky solve: half the work of a general one.
        solution = scipy.linalg.cho_solve(scipy.linalg.cho_factor(weighted_gram + np.diag(penalty)), right)
        kernel[:, writer], bias[writer] = solution[:-1], solution[-1]
    if transform is not None:
        kernel = transform @ kernel  # scores of standardised x: (x @ transform) @ k = x @ (transform @ k)
    return WriterVerifier(mean, scale, kernel, bias)


def save_verifier(verifier: WriterVerifier, path: Path) -> None:
    """Write the verifier's four arrays to an uncompressed .npz (no pickled objects)."""
    save_npz({name: getattr(verifier, name) for name in VERIFIER_ARRAYS}, path)


def load_verifier(path: Path) -> WriterVerifier:
    """Read a verifier written by `save_verifier`, with an error that names the file and the fix."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return WriterVerifier(*(np.asarray(arrays[name], dtype=np.float64) for name in VERIFIER_ARRAYS))
    except UNREADABLE_NPZ_ERRORS as error:
        raise VerifierError(
            f"{path}: not a readable verifier ({error}). Rerun the train stage (`dvc repro train`)."
        ) from error

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
pass over the data instead of W passes (scikit-learn's `RidgeClassifier` with sample weights, which
gives the same weights and is what the tests compare against). Writer w's system differs from that
shared matrix only by a scalar factor, a multiple of the identity and a term of rank n_w (its own
rows). So the fit makes one symmetric eigendecomposition of the shared features x features matrix
(or, with fewer rows than features, of the n x n matrix X X^T, which gives the same non-zero part:
`FeatureSpectrum.thin`) and rotates the rows into its eigenbasis; then each writer
costs O(features * n_w^2) by the Woodbury identity on its n_w rows, instead of a (features + 1)^3 / 3
Cholesky factorisation, and the unpenalised bias is eliminated by its Schur complement. A writer
with more rows than half the features is solved by that Cholesky factorisation instead.

Optionally (`whitening` > 0) the standardised embeddings are first whitened by the pooled
within-writer covariance of the training embeddings (within-class covariance normalisation, as in
speaker verification): directions in which one writer's own signatures vary are shrunk, directions
in which they agree are stretched. It is fitted on training genuine signatures only, is linear, and
is folded into the kernel, so the stored verifier and everything that scores with it are unchanged.
`whitening` is the ridge added to the covariance, relative to its mean eigenvalue.

The background. Rows can be marked outside the background (`fit_writer_verifier`'s `background`): the
references of writers enrolled without retraining (`sigpipe enrol`). Such a row is a positive of its own
writer and nothing else: the negatives of every writer, the standardisation and the whitening are fitted
on the background rows only, as the field's writer-dependent protocol draws every writer's negatives
from one fixed development set (Hafemann et al. 2017). So enrolling or removing such a writer leaves
every other writer's model as it was, and a rebuild that keeps the same rows outside the background
solves the same problem. Every writer is solved by the same Woodbury identity on the background's
spectrum; a thin one is first extended by the directions of the rows outside the background that it
does not span (`FeatureSpectrum.spanning`), along which the background has no variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.model.verifier_solve import (
    MINIMUM_SCALE,
    FeatureSpectrum,
    background_design,
    cholesky_writer_solution,
    class_weights,
    uses_woodbury,
    with_bias_column,
    woodbury_writer_solution,
)
from tasks.workspace.errors import VerifierError
from tasks.workspace.files import UNREADABLE_NPZ_ERRORS, save_npz

VERIFIER_ARRAYS = ("mean", "scale", "kernel", "bias")
# One writer solved alone (`with_writer_solved`) goes through the (n, n) eigendecomposition of its rows when
# they are fewer than this fraction of the features, else through one (features + 1)^2 Cholesky
# factorisation: about n^2 f + 9 n^3 against n f^2 + f^3 / 3 operations, equal near n = f / 3.
SMALL_EIGENDECOMPOSITION_MAXIMUM_ROWS_PER_FEATURE = 1 / 3


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
    embeddings: np.ndarray,
    labels: np.ndarray,
    writer_count: int,
    regularization: float,
    whitening: float = 0.0,
    background: np.ndarray | None = None,
) -> WriterVerifier:
    """Fit every writer's balanced ridge classifier on (n, features) embeddings labelled 0..writers-1.

    For writer w, with sample weights s (positives and negatives half each) and targets t in
    {+1, -1}, minimises sum_i s_i (x_i . k + b - t_i)^2 + regularization * |k|^2; its positives are its
    rows, its negatives the other writers' rows in `background` (a boolean per row, default every row:
    the module's docstring says why). Writers with few rows (`uses_woodbury`) share one
    eigendecomposition of the background's X^T X (through X X^T when there are fewer rows than features:
    `FeatureSpectrum.thin`) and are solved by `woodbury_writer_solution`; the others by
    `cholesky_writer_solution`. With `whitening` > 0 the features are `within_writer_whitening`'s
    transform of the standardised embeddings, and the kernel is mapped back so that it applies to the
    standardised embeddings.
    """
    labels = np.asarray(labels)
    background = np.ones(len(labels), dtype=bool) if background is None else np.asarray(background, dtype=bool)
    if writer_count < 2 or len(np.unique(labels)) < writer_count:
        raise VerifierError(
            f"a writer-dependent verifier needs training embeddings of every writer and at least 2 writers; "
            f"got {len(np.unique(labels))} of {writer_count}"
        )
    if len(np.unique(labels[background])) < 2:
        raise VerifierError(
            "a writer-dependent verifier needs the background (the dataset's training signatures, every "
            f"writer's negatives) to hold at least 2 writers; it holds {len(np.unique(labels[background]))}"
        )
    mean, scale = standardisation(embeddings[background])
    standardised = (np.asarray(embeddings, dtype=np.float64) - mean) / scale
    transform = (
        within_writer_whitening(standardised[background], labels[background], whitening) if whitening > 0 else None
    )
    if transform is not None:
        standardised = standardised @ transform
    base, base_labels = standardised[background], labels[background]
    outside, outside_labels = standardised[~background], labels[~background]
    feature_count = standardised.shape[1]
    own_counts = [int(np.sum(base_labels == writer)) for writer in range(writer_count)]
    extra_counts = [int(np.sum(outside_labels == writer)) for writer in range(writer_count)]
    weights = [
        class_weights(own_counts[writer] + extra_counts[writer], len(base) - own_counts[writer])
        for writer in range(writer_count)
    ]
    few_rows = [uses_woodbury(own_counts[w] + extra_counts[w], feature_count) for w in range(writer_count)]
    kernel = np.empty((feature_count, writer_count))
    bias = np.empty(writer_count)
    woodbury = [writer for writer in range(writer_count) if few_rows[writer]]
    if woodbury:
        # One spectrum for every writer: the background's, spanning the rows outside it too (a thin one
        # does not: enrolled references need not lie in the background rows' span).
        extra_rows = np.isin(outside_labels, woodbury)
        spectrum = FeatureSpectrum.of(base).spanning(outside[extra_rows])
        rotated_kernel = np.empty((len(spectrum.values), len(woodbury)))
        for column, writer in enumerate(woodbury):
            extra = outside[outside_labels == writer] @ spectrum.vectors
            rotated_kernel[:, column], bias[writer] = woodbury_writer_solution(
                spectrum, base_labels == writer, extra, *weights[writer], regularization
            )
        kernel[:, woodbury] = spectrum.vectors @ rotated_kernel  # back from the eigenbasis, all at once
    direct = [writer for writer in range(writer_count) if not few_rows[writer]]
    if direct:
        design_gram, column_sums, penalty = background_design(base, regularization)
        for writer in direct:
            own = with_bias_column(base[base_labels == writer])
            extra = with_bias_column(outside[outside_labels == writer])
            solution = cholesky_writer_solution(design_gram, column_sums, own, extra, *weights[writer], penalty)
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


def with_writer_solved(
    verifier: WriterVerifier,
    column: int,
    embeddings: np.ndarray,
    labels: np.ndarray,
    regularization: float,
    background: np.ndarray,
) -> WriterVerifier | None:
    """`verifier` with writer `column`'s model solved for the rows given (added when `column` is the writer
    count), every other writer's kept: what `fit_writer_verifier` gives to rounding when the background
    rows are those `verifier` was fitted on, as after an enrolment (its rows are outside the background).
    One writer costs one Cholesky factorisation (or, with far fewer rows than features, one small
    eigendecomposition) instead of the whole fit. Only for an unwhitened verifier (the whitening's
    transform is not kept) and a background whose rows and labels are those `verifier` was fitted on:
    the caller guarantees both; what is checked is the background's standardisation (None when it is not
    `verifier`'s: the caller fits again) and that `column` is a writer with rows."""
    labels, background = np.asarray(labels), np.asarray(background, dtype=bool)
    if not 0 <= column <= verifier.writer_count or not np.any(labels == column):
        raise VerifierError(f"writer {column} has no rows, or is beyond the next of {verifier.writer_count} writers")
    mean, scale = standardisation(embeddings[background])
    if not (np.allclose(mean, verifier.mean, rtol=1e-9, atol=1e-12) and np.allclose(scale, verifier.scale, rtol=1e-9)):
        return None
    standardised = (np.asarray(embeddings, dtype=np.float64) - verifier.mean) / verifier.scale
    base, base_labels = standardised[background], labels[background]
    own = base_labels == column
    extra = standardised[~background & (labels == column)]
    weights = class_weights(int(own.sum()) + len(extra), len(base) - int(own.sum()))
    if len(base) + len(extra) < SMALL_EIGENDECOMPOSITION_MAXIMUM_ROWS_PER_FEATURE * base.shape[1]:
        spectrum = FeatureSpectrum.of(base).spanning(extra)
        rotated_kernel, bias = woodbury_writer_solution(
            spectrum, own, extra @ spectrum.vectors, *weights, regularization
        )
        kernel = spectrum.vectors @ rotated_kernel
    else:
        design_gram, column_sums, penalty = background_design(base, regularization)
        solution = cholesky_writer_solution(
            design_gram, column_sums, with_bias_column(base[own]), with_bias_column(extra), *weights, penalty
        )
        kernel, bias = solution[:-1], float(solution[-1])
    kernels, biases = verifier.kernel.copy(), verifier.bias.copy()
    if column == verifier.writer_count:
        kernels, biases = np.hstack([kernels, kernel[:, np.newaxis]]), np.append(biases, bias)
    else:
        kernels[:, column], biases[column] = kernel, bias
    return WriterVerifier(verifier.mean, verifier.scale, kernels, biases)

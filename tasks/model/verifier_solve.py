"""The linear algebra of the writer verifier's solves (`tasks.model.verifier`): each writer's balanced
ridge system with an unpenalised bias, by the Woodbury identity on a shared eigendecomposition of the
background's features (`FeatureSpectrum`, `woodbury_writer_solution`) or by one Cholesky factorisation of
its own (features + 1)^2 system (`cholesky_writer_solution`, on `background_design`). NumPy and SciPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

MINIMUM_SCALE = 1e-6  # a feature constant over the training embeddings is left unscaled
# A writer with more own rows than this fraction of the features is solved by one Cholesky factorisation
# of its own (features + 1)^2 system: the Woodbury solve's n_w x n_w system would no longer be small.
WOODBURY_MAXIMUM_ROWS_PER_FEATURE = 0.5
# Eigenvalues of X X^T below this share of the largest are dropped from a thin spectrum: directions the
# training rows do not span to float precision, on which no kernel can depend.
THIN_SPECTRUM_RELATIVE_FLOOR = 1e-12


def class_weights(positives: int, negatives: int) -> tuple[float, float]:
    """Per-sample weights of a writer's positives and of its negatives: each side sums to 1/2."""
    return 0.5 / positives, 0.5 / negatives


@dataclass(frozen=True)
class FeatureSpectrum:
    """The eigendecomposition X^T X = vectors @ diag(values) @ vectors.T of the (n, features) training
    features X (all of it, or its non-zero part: `thin`), and X's rows in that eigenbasis: what every
    writer's Woodbury solve shares. r below is `features` (full) or the kept rank (thin)."""

    values: np.ndarray  # (r,), clipped at 0 (X^T X is positive semi-definite)
    vectors: np.ndarray  # (features, r), orthonormal columns (thin: to the rounding of X^T U L^-1/2)
    rotated: np.ndarray  # (n, r) = X @ vectors
    rotated_sums: np.ndarray  # (r,): the column sums of `rotated`

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureSpectrum:
        """The spectrum of features.T @ features, by the cheaper of its two eigendecompositions."""
        return cls.thin(features) if len(features) < features.shape[1] else cls.full(features)

    @classmethod
    def full(cls, features: np.ndarray) -> FeatureSpectrum:
        """Every eigenpair of the (features, features) matrix X^T X."""
        values, vectors = np.linalg.eigh(features.T @ features)
        rotated = features @ vectors
        return cls(np.maximum(values, 0.0), vectors, rotated, rotated.sum(axis=0))

    @classmethod
    def thin(cls, features: np.ndarray) -> FeatureSpectrum:
        """The eigenpairs of X^T X with a non-zero value, from the smaller (n, n) matrix X X^T = U L U^T:
        vectors X^T U L^-1/2, rows in that basis U L^1/2. Exact for the writer solves: their right-hand
        sides and own rows are combinations of X's rows, so each kernel lies in the rows' span, which
        these vectors span (the penalised system keeps that span and its complement apart). A kept value
        near the floor gives a vector that is orthonormal only roughly, but the kernel does not depend
        on it: it is X^T U f(L) U^T applied to the writer's sums, f bounded by 1 / regularization, so
        the small roots cancel. Standardised (centred) features always have one zero value, dropped."""
        values, left = np.linalg.eigh(features @ features.T)
        kept = values > THIN_SPECTRUM_RELATIVE_FLOOR * max(float(values.max()), 0.0)
        values, left = values[kept], left[:, kept]
        root = np.sqrt(values)
        rotated = left * root
        return cls(values, features.T @ (left / root), rotated, rotated.sum(axis=0))

    def spanning(self, rows: np.ndarray) -> FeatureSpectrum:
        """This spectrum with orthonormal directions added (eigenvalue 0: X has no part along them) until its
        vectors also span `rows` (rows outside X, such as enrolled references): what a writer's Woodbury
        solve needs when its own rows leave a thin spectrum's span. Unchanged when they do not."""
        residual = rows - (rows @ self.vectors) @ self.vectors.T
        if not len(rows):
            return self
        directions, sizes, _ = np.linalg.svd(residual.T, full_matrices=False)
        kept = sizes > THIN_SPECTRUM_RELATIVE_FLOOR**0.5 * max(float(np.abs(rows).max()), MINIMUM_SCALE)
        if not kept.any():
            return self
        added = int(kept.sum())
        return FeatureSpectrum(
            np.concatenate([self.values, np.zeros(added)]),
            np.hstack([self.vectors, directions[:, kept]]),
            np.hstack([self.rotated, np.zeros((len(self.rotated), added))]),
            np.concatenate([self.rotated_sums, np.zeros(added)]),
        )


def uses_woodbury(own_rows: int, feature_count: int) -> bool:
    """Whether a writer with `own_rows` rows is solved by the Woodbury identity (few rows) or directly."""
    return own_rows <= WOODBURY_MAXIMUM_ROWS_PER_FEATURE * feature_count


def woodbury_writer_solution(
    spectrum: FeatureSpectrum,
    own: np.ndarray,
    extra: np.ndarray,
    positive_weight: float,
    negative_weight: float,
    regularization: float,
) -> tuple[np.ndarray, float]:
    """One writer's kernel, in the spectrum's eigenbasis, and bias. `own` marks the writer's rows among the
    spectrum's (the background), `extra` holds its other rows already in the eigenbasis (n_e, r): rows
    outside the background, which the basis must span. Every spectrum row not `own` is a negative.

    The normal equations are [[A, c], [c^T, m]] [k; b] = [r; rho] with the feature block
    A = negative_weight * X^T X + regularization * I + (positive_weight - negative_weight) * O^T O
    + positive_weight * E^T E, O the writer's own rows of X and E its extra rows. In the eigenbasis the
    first two terms are the diagonal h^-1 = negative_weight * values + regularization, so A^-1 applied to
    [r, c] costs, by the Woodbury identity, one (n_o + n_e)-square solve. The bias then follows from its
    Schur complement m - c^T A^-1 c.
    """
    rotated_own = spectrum.rotated[own]  # (n_o, r): O @ vectors
    rows = np.vstack([rotated_own, extra]) if len(extra) else rotated_own
    corrections = np.concatenate(
        [np.full(len(rotated_own), positive_weight - negative_weight), np.full(len(extra), positive_weight)]
    )
    positive_sum = rows.sum(axis=0)
    negative_sum = spectrum.rotated_sums - rotated_own.sum(axis=0)
    positive_count, negative_count = len(rows), len(spectrum.rotated) - len(rotated_own)
    # sum_i s_i t_i x_i, sum_i s_i x_i, sum_i s_i and sum_i s_i t_i, s the sample weights, t the targets.
    right = positive_weight * positive_sum - negative_weight * negative_sum
    bias_column = positive_weight * positive_sum + negative_weight * negative_sum
    weight_sum = positive_weight * positive_count + negative_weight * negative_count
    target_sum = positive_weight * positive_count - negative_weight * negative_count
    inverse_diagonal = 1.0 / (negative_weight * spectrum.values + regularization)
    scaled = inverse_diagonal[:, np.newaxis] * np.stack([right, bias_column], axis=1)  # h * [r, c]
    # (h^-1 + U^T D U)^-1 = h - h U^T (I + D U h U^T)^-1 D U h, U the rows, D their corrections. The small
    # matrix is non-singular because A is positive definite.
    small = np.eye(len(rows)) + corrections[:, np.newaxis] * ((rows * inverse_diagonal) @ rows.T)
    inner = scipy.linalg.solve(small, corrections[:, np.newaxis] * (rows @ scaled))
    solved = scaled - inverse_diagonal[:, np.newaxis] * (rows.T @ inner)  # A^-1 [r, c]
    bias = (target_sum - bias_column @ solved[:, 0]) / (weight_sum - bias_column @ solved[:, 1])
    return solved[:, 0] - bias * solved[:, 1], float(bias)


def cholesky_writer_solution(
    gram: np.ndarray,
    column_sums: np.ndarray,
    own: np.ndarray,
    extra: np.ndarray,
    positive_weight: float,
    negative_weight: float,
    penalty: np.ndarray,
) -> np.ndarray:
    """One writer's [kernel; bias] by one Cholesky factorisation of its full (features + 1)^2 system.

    `gram`, `column_sums` and `penalty` are those of the background's design [X, 1]; `own` holds the
    writer's rows of it, `extra` its rows outside the background (same design). The weighted Gram matrix
    is the all-negatives one plus corrections from the writer's rows.
    """
    weighted_gram = (
        negative_weight * gram
        + (positive_weight - negative_weight) * (own.T @ own)
        + positive_weight * (extra.T @ extra)
    )
    # sum_i s_i t_i x_i = positive_weight * positive_sum - negative_weight * (all_sum - own_sum)
    positive_sum = own.sum(axis=0) + extra.sum(axis=0)
    right = positive_weight * positive_sum - negative_weight * (column_sums - own.sum(axis=0))
    # Symmetric positive definite (a positive penalty on every weight, a positive weight on every
    # sample for the bias), so a Cholesky solve: half the work of a general one.
    solution: np.ndarray = scipy.linalg.cho_solve(scipy.linalg.cho_factor(weighted_gram + np.diag(penalty)), right)
    return solution


def bias_design_gram(features: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Gram matrix and column sums of the design [features, 1] from the features' own Gram matrix."""
    sums = features.sum(axis=0)
    top = np.hstack([gram, sums[:, np.newaxis]])
    bottom = np.append(sums, len(features))
    return np.vstack([top, bottom]), bottom


def background_design(base: np.ndarray, regularization: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What every writer's Cholesky solve shares: the Gram matrix and column sums of the background's design
    [X, 1], and the penalty on its columns (`regularization` on the weights, none on the bias)."""
    design_gram, column_sums = bias_design_gram(base, base.T @ base)
    penalty = np.full(base.shape[1] + 1, regularization)
    penalty[-1] = 0.0  # the bias is not penalised
    return design_gram, column_sums, penalty


def with_bias_column(rows: np.ndarray) -> np.ndarray:
    """The rows of the design [X, 1]."""
    return np.hstack([rows, np.ones((len(rows), 1))])

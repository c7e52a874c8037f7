"""The writer-dependent verifier: the same weights as scikit-learn's ridge classifier, hand-computed
scores, separation of a writer from the others, and its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from sklearn.linear_model import RidgeClassifier

from tasks.model.verifier import (
    WriterVerifier,
    fit_writer_verifier,
    load_verifier,
    save_verifier,
    standardisation,
    with_writer_solved,
    within_writer_whitening,
)
from tasks.model.verifier_solve import FeatureSpectrum, uses_woodbury
from tasks.workspace.errors import VerifierError


def writers_data(seed: int = 0, writers: int = 3, per_writer: int = 12, features: int = 6, spread: float = 3.0):
    """Embeddings whose first features carry the writer, the rest noise; an uneven writer 0."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(writers), per_writer)[: writers * per_writer - 4]  # writer 2 has 4 fewer
    centres = rng.normal(0, spread, (writers, features))
    return centres[labels] + rng.normal(0, 1, (len(labels), features)), labels


def unequal_writers_data(sizes: list[int], features: int = 60, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Writers of the given row counts, their centres apart, with correlated noise across the features."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    noise = rng.normal(0, 1, (len(labels), features)) @ rng.normal(0, 0.3, (features, features))
    return rng.normal(0, 2, (len(sizes), features))[labels] + noise, labels


def cholesky_reference(
    embeddings: np.ndarray,
    labels: np.ndarray,
    writers: int,
    regularization: float,
    whitening: float,
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward solve: per writer, the weighted normal equations of the design [X, 1], with
    no penalty on the bias, factorised by Cholesky; the kernel mapped back through the whitening. A row
    outside `background` weighs nothing except as a positive of its own writer, and the standardisation
    and whitening are fitted on the background rows."""
    background = np.ones(len(labels), dtype=bool) if background is None else background
    mean, scale = standardisation(embeddings[background])
    features = (embeddings - mean) / scale
    transform = (
        within_writer_whitening(features[background], labels[background], whitening)
        if whitening > 0
        else np.eye(features.shape[1])
    )
    design = np.hstack([features @ transform, np.ones((len(labels), 1))])
    penalty = np.diag(np.append(np.full(features.shape[1], regularization), 0.0))
    solutions = []
    for writer in range(writers):
        own = labels == writer
        negatives = background & ~own
        weights = np.where(own, 0.5 / own.sum(), np.where(negatives, 0.5 / negatives.sum(), 0.0))
        targets = np.where(own, 1.0, -1.0)
        normal = design.T @ (weights[:, np.newaxis] * design) + penalty
        solutions.append(scipy.linalg.cho_solve(scipy.linalg.cho_factor(normal), design.T @ (weights * targets)))
    solution = np.stack(solutions, axis=1)
    return transform @ solution[:-1], solution[-1]


def assert_relatively_close(actual: np.ndarray, expected: np.ndarray, relative: float = 1e-8) -> None:
    """Equal within `relative` of the largest expected magnitude (elements near 0 are not divided by)."""
    np.testing.assert_allclose(actual, expected, rtol=relative, atol=relative * np.abs(expected).max())


@pytest.mark.parametrize("features", [60, 120])  # 60 rows: the full spectrum at 60 features, the thin one at 120
@pytest.mark.parametrize("whitening", [0.0, 0.3])
@pytest.mark.parametrize("regularization", [0.003, 1.0])
def test_the_shared_eigendecomposition_equals_a_cholesky_solve_per_writer(
    whitening: float, regularization: float, features: int
) -> None:
    sizes = [8, 12, 20, 5, 15]  # all below 60 / 2: every writer takes the Woodbury path
    assert all(uses_woodbury(size, features) for size in sizes)
    embeddings, labels = unequal_writers_data(sizes, features=features)
    spectrum = FeatureSpectrum.of(embeddings)
    assert spectrum.vectors.shape == (features, min(features, sum(sizes)))
    verifier = fit_writer_verifier(embeddings, labels, len(sizes), regularization, whitening)
    kernel, bias = cholesky_reference(embeddings, labels, len(sizes), regularization, whitening)
    assert_relatively_close(verifier.kernel, kernel)
    assert_relatively_close(verifier.bias, bias)


@pytest.mark.parametrize("whitening", [0.0, 0.3])
def test_a_writer_with_many_rows_falls_back_to_cholesky_with_the_same_result(whitening: float) -> None:
    sizes = [8, 35, 20, 5, 15]  # writer 1 has more rows than 60 / 2 features
    assert not uses_woodbury(35, 60) and uses_woodbury(20, 60)
    embeddings, labels = unequal_writers_data(sizes, seed=6)
    verifier = fit_writer_verifier(embeddings, labels, len(sizes), 0.003, whitening)
    kernel, bias = cholesky_reference(embeddings, labels, len(sizes), 0.003, whitening)
    assert_relatively_close(verifier.kernel, kernel)
    assert_relatively_close(verifier.bias, bias)


def test_the_thin_spectrum_is_exact_on_rank_deficient_rows() -> None:
    """Duplicated rows (a view equal to its clean image) make X X^T singular: the dropped directions
    carry no data, and the solve still equals the per-writer Cholesky one."""
    embeddings, labels = unequal_writers_data([8, 12, 6], features=90, seed=9)
    embeddings, labels = np.vstack([embeddings, embeddings[:10]]), np.concatenate([labels, labels[:10]])
    spectrum = FeatureSpectrum.of(embeddings)
    assert spectrum.vectors.shape[1] < len(labels) < 90  # thin, and some values dropped
    verifier = fit_writer_verifier(embeddings, labels, 3, 0.01)
    kernel, bias = cholesky_reference(embeddings, labels, 3, 0.01, 0.0)
    assert_relatively_close(verifier.kernel, kernel)
    assert_relatively_close(verifier.bias, bias)


def test_equal_class_weights_and_a_majority_writer_keep_the_woodbury_solve_exact() -> None:
    """Two writers of equal size weigh their rows alike (no own-row correction); a writer with most of
    the rows (fewer than half the features) weighs them less than the others: both on the Woodbury path."""
    for sizes in ([25, 25], [28, 6]):
        embeddings, labels = unequal_writers_data(sizes, seed=7)
        verifier = fit_writer_verifier(embeddings, labels, len(sizes), 0.01)
        kernel, bias = cholesky_reference(embeddings, labels, len(sizes), 0.01, 0.0)
        assert_relatively_close(verifier.kernel, kernel)
        np.testing.assert_allclose(verifier.bias, bias, atol=1e-10)


@pytest.mark.parametrize("features", [6, 60])  # 6: every writer takes the Cholesky fallback; 60: Woodbury
def test_each_writer_equals_scikit_learns_balanced_ridge_classifier(features: int) -> None:
    embeddings, labels = writers_data(features=features)
    path_taken = {uses_woodbury(int(np.sum(labels == writer)), features) for writer in range(3)}
    assert path_taken == {features == 60}
    verifier = fit_writer_verifier(embeddings, labels, 3, regularization=0.05)
    mean, scale = standardisation(embeddings)
    standardised = (embeddings - mean) / scale
    for writer in range(3):
        targets = np.where(labels == writer, 1, -1)
        weights = np.where(labels == writer, 0.5 / np.sum(labels == writer), 0.5 / np.sum(labels != writer))
        reference = RidgeClassifier(alpha=0.05).fit(standardised, targets, sample_weight=weights)
        np.testing.assert_allclose(verifier.kernel[:, writer], reference.coef_.ravel(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(verifier.scores(embeddings)[:, writer], reference.decision_function(standardised))


def enrolled_rows(labels: np.ndarray, writers: tuple[int, ...], rows_each: int) -> np.ndarray:
    """The background mask that puts the last `rows_each` rows of each of `writers` outside it."""
    background = np.ones(len(labels), dtype=bool)
    for writer in writers:
        background[np.flatnonzero(labels == writer)[-rows_each:]] = False
    return background


# 87 or 104 background rows: the full spectrum at 60 features, the thin one at 150 (where the rows outside
# the background leave the background's span); 40 rows at 60 features: writer 4 takes the Cholesky fallback.
@pytest.mark.parametrize("features", [60, 150])
@pytest.mark.parametrize("whitening", [0.0, 0.3])
@pytest.mark.parametrize("sizes", [[20, 20, 20, 20, 15, 12], [20, 20, 20, 20, 40, 12]])
def test_rows_outside_the_background_are_positives_of_their_writer_only(
    features: int, whitening: float, sizes: list[int]
) -> None:
    """Writer 5 entirely outside the background (an enrolled writer), writer 4 with 8 rows outside it
    (references added to a dataset writer): each equals the straightforward solve, and every writer
    without such rows has the model it has when they are not there at all."""
    embeddings, labels = unequal_writers_data(sizes, features=features, seed=11)
    background = enrolled_rows(labels, (4,), 8) & (labels != 5)
    verifier = fit_writer_verifier(embeddings, labels, len(sizes), 0.01, whitening, background)
    kernel, bias = cholesky_reference(embeddings, labels, len(sizes), 0.01, whitening, background)
    assert_relatively_close(verifier.kernel, kernel)
    assert_relatively_close(verifier.bias, bias, relative=1e-7)
    unchanged = [0, 1, 2, 3]
    background_only = fit_writer_verifier(embeddings[background], labels[background], 5, 0.01, whitening)
    np.testing.assert_allclose(verifier.mean, background_only.mean)
    np.testing.assert_allclose(verifier.scale, background_only.scale)
    assert_relatively_close(verifier.kernel[:, unchanged], background_only.kernel[:, unchanged])
    assert_relatively_close(verifier.bias[unchanged], background_only.bias[unchanged], relative=1e-7)
    dataset_rows = labels != 5  # writer 4's added rows as dataset rows instead: they are the others' negatives
    retrained = fit_writer_verifier(embeddings[dataset_rows], labels[dataset_rows], 5, 0.01, whitening)
    assert not np.allclose(retrained.kernel[:, unchanged], verifier.kernel[:, unchanged])


def test_enrolling_a_writer_changes_no_other_writers_scores() -> None:
    embeddings, labels = unequal_writers_data([20, 20, 20, 12], features=150, seed=12)
    background = labels != 3
    before = fit_writer_verifier(embeddings[background], labels[background], 3, 0.01, 0.3)
    after = fit_writer_verifier(embeddings, labels, 4, 0.01, 0.3, background)
    np.testing.assert_allclose(after.scores(embeddings)[:, :3], before.scores(embeddings), rtol=1e-9, atol=1e-9)
    assert (np.argmax(after.scores(embeddings[~background]), axis=1) == 3).all()  # and answers the new writer


# About 110 rows: a Cholesky solve at 60 (full spectrum) and 150 (thin), a small eigendecomposition at 400.
@pytest.mark.parametrize("features", [60, 150, 400])
def test_one_writer_solved_alone_equals_the_whole_fit(features: int) -> None:
    """An enrolment solves only the enrolled writer's model and keeps the others' (`with_writer_solved`):
    a new writer (column 5) and references added to a dataset writer (column 4) give the whole fit's
    verifier; a changed background is not patched (None)."""
    embeddings, labels = unequal_writers_data([20, 20, 20, 20, 15, 12], features=features, seed=14)
    background = enrolled_rows(labels, (4,), 6) & (labels != 5)
    whole = fit_writer_verifier(embeddings, labels, 6, 0.01, background=background)
    known = labels != 5  # before writer 5 was enrolled
    before = fit_writer_verifier(embeddings[known], labels[known], 5, 0.01, background=background[known])
    new_writer = with_writer_solved(before, 5, embeddings, labels, 0.01, background)
    dataset_only = fit_writer_verifier(embeddings[background], labels[background], 5, 0.01)
    more_references = with_writer_solved(dataset_only, 4, embeddings[known], labels[known], 0.01, background[known])
    assert new_writer is not None and more_references is not None
    for solved in (new_writer, more_references):
        columns = solved.writer_count
        assert_relatively_close(solved.kernel, whole.kernel[:, :columns])
        assert_relatively_close(solved.bias, whole.bias[:columns], relative=1e-7)
    changed = background | (labels == 4)  # writer 4's added rows as background rows: another problem
    assert with_writer_solved(whole, 5, embeddings, labels, 0.01, changed) is None


def test_a_background_of_one_writer_is_refused() -> None:
    embeddings, labels = unequal_writers_data([10, 10, 10], features=20, seed=13)
    with pytest.raises(VerifierError, match="background .* at least 2 writers; it holds 1"):
        fit_writer_verifier(embeddings, labels, 3, 0.01, background=labels == 0)


def test_scores_by_hand() -> None:
    verifier = WriterVerifier(
        mean=np.array([1.0, 2.0]),
        scale=np.array([2.0, 4.0]),
        kernel=np.array([[1.0, -1.0], [0.5, 2.0]]),
        bias=np.array([0.0, 1.0]),
    )
    # x = (3, 6) -> standardised (1, 1) -> (1 + 0.5 + 0, -1 + 2 + 1) = (1.5, 2.0)
    np.testing.assert_allclose(verifier.scores(np.array([[3.0, 6.0]])), [[1.5, 2.0]])


def test_each_writers_own_embeddings_score_above_the_others() -> None:
    embeddings, labels = writers_data(seed=1, spread=8.0)
    scores = fit_writer_verifier(embeddings, labels, 3, regularization=0.01).scores(embeddings)
    for writer in range(3):
        assert scores[labels == writer, writer].min() > scores[labels != writer, writer].max()


def test_more_regularization_shrinks_the_weights() -> None:
    embeddings, labels = writers_data(seed=2)
    weak = fit_writer_verifier(embeddings, labels, 3, regularization=0.001)
    strong = fit_writer_verifier(embeddings, labels, 3, regularization=10.0)
    assert np.linalg.norm(strong.kernel) < np.linalg.norm(weak.kernel) / 5


def test_a_constant_feature_does_not_break_the_fit() -> None:
    embeddings, labels = writers_data(seed=3)
    embeddings[:, 0] = 7.0
    verifier = fit_writer_verifier(embeddings, labels, 3, regularization=0.01)
    assert np.all(np.isfinite(verifier.scores(embeddings))) and verifier.scale[0] == 1.0


def test_a_writer_without_embeddings_is_refused() -> None:
    embeddings, labels = writers_data()
    with pytest.raises(VerifierError, match="every writer"):
        fit_writer_verifier(embeddings, labels, 4, regularization=0.01)


def test_file_round_trip_and_a_broken_file_names_itself(tmp_path: Path) -> None:
    embeddings, labels = writers_data()
    verifier = fit_writer_verifier(embeddings, labels, 3, regularization=0.05)
    save_verifier(verifier, tmp_path / "verifier.npz")
    loaded = load_verifier(tmp_path / "verifier.npz")
    np.testing.assert_array_equal(loaded.scores(embeddings), verifier.scores(embeddings))
    broken = tmp_path / "broken.npz"
    broken.write_bytes((tmp_path / "verifier.npz").read_bytes()[:100])
    with pytest.raises(VerifierError, match="broken.npz.*dvc repro train"):
        load_verifier(broken)


def test_whitening_equals_scikit_learn_on_explicitly_whitened_embeddings() -> None:
    embeddings, labels = writers_data(seed=2)
    strength = 0.3
    verifier = fit_writer_verifier(embeddings, labels, 3, regularization=0.05, whitening=strength)
    mean, scale = standardisation(embeddings)
    standardised = (embeddings - mean) / scale
    # The pooled within-writer covariance, by hand, and its inverse square root with the relative ridge.
    centred = np.concatenate([standardised[labels == w] - standardised[labels == w].mean(0) for w in range(3)])
    covariance = centred.T @ centred / len(labels)
    values, vectors = np.linalg.eigh(covariance)
    transform = vectors @ np.diag(1 / np.sqrt(values + strength * values.mean())) @ vectors.T
    whitened = standardised @ transform
    for writer in range(3):
        targets = np.where(labels == writer, 1, -1)
        weights = np.where(labels == writer, 0.5 / np.sum(labels == writer), 0.5 / np.sum(labels != writer))
        reference = RidgeClassifier(alpha=0.05).fit(whitened, targets, sample_weight=weights)
        # The stored kernel applies to standardised embeddings: the whitening is folded into it.
        np.testing.assert_allclose(verifier.scores(embeddings)[:, writer], reference.decision_function(whitened))
    plain = fit_writer_verifier(embeddings, labels, 3, regularization=0.05)
    assert not np.allclose(plain.scores(embeddings), verifier.scores(embeddings))  # it does change the verifier


def test_whitening_keeps_a_strongly_penalised_verifier_separating_new_signatures() -> None:
    """Feature 0 varies widely within each writer and feature 1 barely: a strong L2 penalty spreads
    the weight over both, which lets feature 0's within-writer noise in; whitening by the within-writer
    covariance lets the penalty fall on that noise instead, so held-out signatures separate better."""
    rng = np.random.default_rng(4)

    def two_writers(per_writer: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(2), per_writer)
        noisy, steady = rng.normal(0, 5, len(labels)), rng.normal(0, 0.2, len(labels))
        return np.stack([noisy + labels, steady + labels], axis=1), labels

    def separation(verifier, embeddings: np.ndarray, labels: np.ndarray) -> float:
        scores = verifier.scores(embeddings)[:, 1]
        own, others = scores[labels == 1], scores[labels == 0]
        return (own.mean() - others.mean()) / np.sqrt((own.var() + others.var()) / 2)

    embeddings, labels = two_writers(50)
    held_out, held_out_labels = two_writers(500)
    plain = fit_writer_verifier(embeddings, labels, 2, regularization=100.0)
    whitened = fit_writer_verifier(embeddings, labels, 2, regularization=100.0, whitening=0.01)
    assert separation(whitened, held_out, held_out_labels) > separation(plain, held_out, held_out_labels) + 0.1

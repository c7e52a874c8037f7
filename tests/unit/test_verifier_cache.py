"""The kept verifier of a training problem (tasks.model.verifier_cache): found for that problem only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.model.verifier import fit_writer_verifier
from tasks.model.verifier_cache import (
    background_by_class,
    problem_digest,
    remember_verifier,
    remembered_verifier,
    views_by_class,
)

CLASSES = ("001", "002", "003")
PENALTY, WHITENING = 0.01, 0.0


def problem() -> tuple[np.ndarray, np.ndarray]:
    """(2 views, 9 images, 6 features) embeddings of three writers, three images each, rows interleaved."""
    generator = np.random.default_rng(0)
    labels = np.tile(np.arange(3, dtype=np.int32), 3)
    return (generator.normal(size=(2, 9, 6)) + labels[None, :, None]).astype(np.float32), labels


def digest_of(
    views: np.ndarray,
    labels: np.ndarray,
    penalty: float = PENALTY,
    whitening: float = WHITENING,
    background: np.ndarray | None = None,
) -> str:
    background = np.ones(len(labels), dtype=bool) if background is None else background
    grouped_background = background_by_class(background, labels, CLASSES)
    return problem_digest(views_by_class(views, labels, CLASSES), grouped_background, penalty, whitening)


def test_views_by_class_groups_each_writer_in_class_order() -> None:
    views, labels = problem()
    grouped = views_by_class(views, labels, CLASSES)
    assert list(grouped) == list(CLASSES)
    assert all(grouped[writer].shape == (2, 3, 6) for writer in CLASSES)
    np.testing.assert_array_equal(grouped["002"], views[:, [1, 4, 7]])


def test_the_digest_changes_with_every_part_of_the_problem() -> None:
    views, labels = problem()
    digest = digest_of(views, labels)
    assert digest == digest_of(views.copy(), labels.copy())
    changed = views.copy()
    changed[1, 4, 5] += 1e-3
    assert digest_of(changed, labels) != digest
    assert digest_of(views, labels, penalty=0.1) != digest
    assert digest_of(views, labels, whitening=0.01) != digest
    assert digest_of(views.astype(np.float64), labels) != digest
    enrolled = np.ones(len(labels), dtype=bool)
    enrolled[-1] = False  # the same image an enrolled reference: its writer's positive only, another model
    assert digest_of(views, labels, background=enrolled) != digest
    grouped = views_by_class(views, labels, CLASSES)
    flags = background_by_class(np.ones(len(labels), dtype=bool), labels, CLASSES)
    reordered = {writer: grouped[writer] for writer in reversed(CLASSES)}
    assert problem_digest(reordered, flags, PENALTY, WHITENING) != digest  # another class order, another model


def test_a_kept_verifier_is_found_for_its_problem_only(tmp_path: Path) -> None:
    views, labels = problem()
    verifier = fit_writer_verifier(views.reshape(-1, 6), np.tile(labels, 2), 3, PENALTY, WHITENING)
    path = tmp_path / "models" / "verifier_cache.npz"
    assert remembered_verifier(path, digest_of(views, labels)) is None  # nothing kept yet
    remember_verifier(path, digest_of(views, labels), verifier)
    found = remembered_verifier(path, digest_of(views, labels))
    assert found is not None
    for name in ("mean", "scale", "kernel", "bias"):
        np.testing.assert_array_equal(getattr(found, name), getattr(verifier, name))
    assert remembered_verifier(path, digest_of(views, labels, penalty=0.1)) is None


def test_an_unreadable_cache_is_a_miss(tmp_path: Path) -> None:
    path = tmp_path / "verifier_cache.npz"
    path.write_bytes(b"not a zip file")
    views, labels = problem()
    assert remembered_verifier(path, digest_of(views, labels)) is None


def test_a_cache_that_cannot_be_written_fails_nothing(tmp_path: Path) -> None:
    views, labels = problem()
    verifier = fit_writer_verifier(views.reshape(-1, 6), np.tile(labels, 2), 3, PENALTY, WHITENING)
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache's folder would be")
    assert not remember_verifier(blocked / "verifier_cache.npz", digest_of(views, labels), verifier)
    assert remember_verifier(tmp_path / "verifier_cache.npz", digest_of(views, labels), verifier)

"""The verifier of a training problem, kept with the problem's digest, so the same problem is not solved twice.

`sigpipe enrol` judges a change by the writers enrolled before: their validation figures on the verifier
of the record as it stands, and on the verifier with the change. The record as it stands is the problem
the workspace's last fit solved: the train stage's, or the last enrolment's or removal's. Each of them
keeps its verifier here (`ProjectPaths.verifier_cache_file`) with the digest of its problem (the writers
in class order, each writer's training views and which of them are background, the penalty and the
whitening), and the next enrolment reads it instead of solving that problem again: one eigendecomposition
of a features x features matrix, most of an enrolment's time once there are a few thousand views. A
digest that differs (a parameter changed, a `dvc repro` since, another enrolment's record) is a miss, and
the problem is solved again.

The train stage orders its rows as the manifest does, an enrolment groups them by writer: the same
least-squares problem, so the two verifiers agree to rounding. Only the "before" side of an enrolment is
read from here; the verifier a version is registered with is always solved by the enrolment itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tasks.model.verifier import VERIFIER_ARRAYS, WriterVerifier
from tasks.workspace.files import UNREADABLE_NPZ_ERRORS, save_npz

DIGEST_ARRAY = "problem_digest"
DIGEST_FORMAT = 2  # bump when the digest's content changes, so older caches miss


def problem_digest(
    views_by_writer: Mapping[str, np.ndarray],
    background_by_writer: Mapping[str, np.ndarray],
    penalty: float,
    whitening: float,
) -> str:
    """SHA-256 of a verifier's training problem: the writers in class order, each writer's (views, images,
    features) training embeddings (shape, dtype and bytes) and which of its images are in the background
    (dataset images, not enrolled references: `tasks.model.verifier`), the ridge penalty and the whitening."""
    digest = hashlib.sha256()
    settings = {"format": DIGEST_FORMAT, "penalty": float(penalty), "whitening": float(whitening)}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for writer, views in views_by_writer.items():
        values = np.ascontiguousarray(views)
        in_background = np.asarray(background_by_writer[writer], dtype=bool).tolist()
        digest.update(json.dumps([writer, list(values.shape), values.dtype.str, in_background]).encode())
        digest.update(values.data)
    return digest.hexdigest()


def views_by_class(views: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """(views, n, features) embeddings with n class indices, as each class's own (views, n_c, features), in
    class order and each class's rows in their given order: the grouping `problem_digest` hashes."""
    return {writer: views[:, labels == index] for index, writer in enumerate(classes)}


def background_by_class(background: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """n images' background flags grouped as `views_by_class` groups their embeddings."""
    return {writer: background[labels == index] for index, writer in enumerate(classes)}


def remember_verifier(path: Path, digest: str, verifier: WriterVerifier) -> bool:
    """Keep `verifier` as the solution of the problem with `digest` (replacing what was kept, atomically);
    False when the file cannot be written (a full disk): a cache, so the command that solved the problem
    does not fail for it; the next enrolment finds another digest or none and solves the problem again."""
    arrays = {**{name: getattr(verifier, name) for name in VERIFIER_ARRAYS}, DIGEST_ARRAY: np.array(digest)}
    try:
        save_npz(arrays, path)
    except OSError:
        return False
    return True


def remembered_verifier(path: Path, digest: str) -> WriterVerifier | None:
    """The verifier kept for the problem with `digest`, or None (no cache, another problem, unreadable)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if DIGEST_ARRAY not in arrays.files or str(arrays[DIGEST_ARRAY]) != digest:
                return None
            return WriterVerifier(*(np.asarray(arrays[name], dtype=np.float64) for name in VERIFIER_ARRAYS))
    except UNREADABLE_NPZ_ERRORS:
        return None  # a cache: what cannot be read is solved again

"""What an enrolment or a removal re-solves the verifier on, without running the base on any stored image.

The training set is the workspace's record as it stands: the embed stage's training views of the
manifest's writers (`data/embeddings/train.npz`), less the writers removed since (and the references
of enrolments deleted since), plus each enrolled writer's stored views that the manifest does not hold
yet (it holds them after the next `dvc repro`, embedded by the embed stage). The classes are the
manifest's writers (sorted, as `train` orders them), then the writers enrolled since, in enrolment order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.data.manifest import GENUINE_KIND
from tasks.enrolment.record import (
    Enrolment,
    embeddings_file,
    enrolments,
    reference_manifest_path,
    removed_writers,
)
from tasks.model.verifier import WriterVerifier, fit_writer_verifier, with_writer_solved
from tasks.model.verifier_cache import problem_digest, remember_verifier, remembered_verifier
from tasks.training.embedding_files import flat_views, load_embedded_rows, load_split_embeddings
from tasks.workspace.errors import EnrolmentError
from tasks.workspace.params_model import ModelParams
from tasks.workspace.paths import ProjectPaths

TRAIN_SPLIT = "train"
REPRO_HINT = "Run `dvc repro` first, then enrol again."


@dataclass(frozen=True)
class TrainingSet:
    """Per writer, in class order, its training views (views, images, features) and, per image, whether it
    is a dataset image (the verifier's background) or an enrolled reference (its writer's positive only)."""

    views: dict[str, np.ndarray]
    background: dict[str, np.ndarray]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.views)

    def with_writer(self, writer: str, views: np.ndarray) -> TrainingSet:
        """This set with the enrolled references' `views` added to `writer`'s (a new writer goes last)."""
        new = np.zeros(views.shape[1], dtype=bool)
        if writer not in self.views:
            return TrainingSet({**self.views, writer: views}, {**self.background, writer: new})
        joined = np.concatenate([self.views[writer], views], axis=1)
        flags = np.concatenate([self.background[writer], new])
        return TrainingSet({**self.views, writer: joined}, {**self.background, writer: flags})

    def without(self, writer: str) -> TrainingSet:
        return TrainingSet(
            {name: views for name, views in self.views.items() if name != writer},
            {name: flags for name, flags in self.background.items() if name != writer},
        )


def kept_rows(paths: ProjectPaths, rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The manifest rows that still count: not of a dataset writer removed since, not of an enrolment
    deleted since (the manifest is as the last `dvc repro` left it)."""
    removed = removed_writers(paths)
    current = {
        reference_manifest_path(paths, item.writer, ref) for item in enrolments(paths) for ref in item.references
    }
    return [
        row
        for row in rows
        if (row["path"] in current if paths.is_enrolled_reference(row["path"]) else row["writer"] not in removed)
    ]


def enrolled_views(
    paths: ProjectPaths, enrolment: Enrolment, in_manifest: set[str], views: int, width: int
) -> np.ndarray | None:
    """The stored views of `enrolment`'s references the manifest does not hold, or None when it holds all;
    refused when they are not `views` views of `width` features (the embed stage's)."""
    missing = [reference_manifest_path(paths, enrolment.writer, ref) for ref in enrolment.references]
    missing = [path for path in missing if path not in in_manifest]
    if not missing:
        return None
    stored = load_embedded_rows(embeddings_file(paths, enrolment.writer))
    position = {path: index for index, path in enumerate(stored.paths)}
    if any(path not in position for path in missing) or stored.views.shape[::2] != (views, width):
        raise EnrolmentError(
            f"the stored embeddings of writer {enrolment.writer} do not match its references or the embed "
            f"stage's views and features (another embedding since?). {REPRO_HINT}"
        )
    return stored.views[:, [position[path] for path in missing]]


def training_set(paths: ProjectPaths, rows: Sequence[dict[str, str]]) -> TrainingSet:
    """The record's training views per writer (the module's docstring says which)."""
    wanted = [row for row in kept_rows(paths, rows) if row["split"] == TRAIN_SPLIT and row["kind"] == GENUINE_KIND]
    embedded = load_split_embeddings(paths.embeddings_dir, TRAIN_SPLIT, wanted)
    writers = np.array([row["writer"] for row in wanted])
    in_background = np.array([not paths.is_enrolled_reference(row["path"]) for row in wanted], dtype=bool)
    rows_of = {str(writer): writers == writer for writer in sorted(set(writers))}
    training = TrainingSet(
        {writer: embedded.views[:, mask] for writer, mask in rows_of.items()},
        {writer: in_background[mask] for writer, mask in rows_of.items()},
    )
    in_manifest = set(embedded.paths)
    for enrolment in enrolments(paths):
        extra = enrolled_views(paths, enrolment, in_manifest, embedded.views.shape[0], embedded.views.shape[2])
        if extra is not None:
            training = training.with_writer(enrolment.writer, extra)
    return training


def problem_of(training: TrainingSet, model: ModelParams) -> str:
    """The digest of the problem `fit` solves on `training` (`tasks.model.verifier_cache`)."""
    return problem_digest(training.views, training.background, model.verifier_regularization, model.verifier_whitening)


def fit_or_remembered(paths: ProjectPaths, training: TrainingSet, model: ModelParams) -> WriterVerifier:
    """The verifier of `training`: the one the workspace's last fit kept for this very problem (the train
    stage's, or the last enrolment's or removal's), or solved now when it kept another."""
    remembered = remembered_verifier(paths.verifier_cache_file, problem_of(training, model))
    return remembered if remembered is not None else fit(training, model)


def remember(paths: ProjectPaths, training: TrainingSet, model: ModelParams, verifier: WriterVerifier) -> None:
    """Keep `verifier` as the record's verifier once it is registered: the next enrolment's "before"."""
    remember_verifier(paths.verifier_cache_file, problem_of(training, model), verifier)


def fit_without_writer(paths: ProjectPaths, training: TrainingSet, writer: str, model: ModelParams) -> WriterVerifier:
    """The verifier of `training` without `writer`. An enrolled writer (none of its views in the background)
    is taken out of the record's verifier (`fit_or_remembered`: the kept one, solving nothing): every other
    writer's model is the same without it (`tasks.model.verifier`), so this is exact. A dataset writer's
    signatures leave the background, and the others are solved again without them."""
    if training.background[writer].any():
        return fit(training.without(writer), model)
    record = fit_or_remembered(paths, training, model)
    others = [index for index, name in enumerate(training.classes) if name != writer]
    return WriterVerifier(record.mean, record.scale, record.kernel[:, others], record.bias[others])


def fit_with_writer(before: WriterVerifier, training: TrainingSet, writer: str, model: ModelParams) -> WriterVerifier:
    """The verifier of `training` from `before`, the verifier of the same record without `writer`'s new
    references: only `writer`'s model is solved, every other writer's kept (their background did not
    change: `tasks.model.verifier`); the whole fit when the verifier is whitened or the background moved."""
    if model.verifier_whitening > 0:
        return fit(training, model)
    samples, labels, background = flat_problem(training)
    refitted = with_writer_solved(
        before, training.classes.index(writer), samples, labels, model.verifier_regularization, background
    )
    return refitted if refitted is not None else fit(training, model)


def flat_problem(training: TrainingSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every view of every writer as (samples, features), their class indices and background flags."""
    views = np.concatenate(list(training.views.values()), axis=1)
    labels = np.concatenate(
        [np.full(item.shape[1], index, dtype=np.int32) for index, item in enumerate(training.views.values())]
    )
    background = np.concatenate(list(training.background.values()))
    samples, sample_labels = flat_views(views, labels)
    return samples, sample_labels, np.tile(background, views.shape[0])


def fit(training: TrainingSet, model: ModelParams) -> WriterVerifier:
    """The writer-dependent verifier (= the ridge head) on every view of every writer, in class order, with
    the dataset images as its background: an enrolled writer changes no other writer's model."""
    if len(training.classes) < 2:
        raise EnrolmentError(f"{len(training.classes)} writer(s) would be left: a verifier needs at least 2")
    dataset_writers = [writer for writer, flags in training.background.items() if flags.any()]
    if len(dataset_writers) < 2:
        raise EnrolmentError(
            f"{len(dataset_writers)} dataset writer(s) would be left ({', '.join(dataset_writers) or 'none'}): every "
            "writer's negatives are the dataset's training signatures, so a verifier needs at least 2 dataset writers"
        )
    samples, labels, background = flat_problem(training)
    return fit_writer_verifier(
        samples,
        labels,
        len(training.classes),
        model.verifier_regularization,
        model.verifier_whitening,
        background=background,
    )

"""`sigpipe remove`: a writer taken out of the model, and its enrolment data out of the workspace.

The verifier without the writer (an enrolled writer's model taken out of the kept verifier, the others
unchanged; a dataset writer's signatures out of the background, everyone solved again) is registered as a
new version, which becomes champion (the served model must stop answering with a removed writer). Then
the writer's enrolment folder (references, embeddings) and its prepared images are deleted; a writer of the dataset
itself is recorded in `data/enrolments/removed.json`, so the next `dvc repro` leaves it out (the raw
data is never modified). Earlier registry versions that know the writer are listed, and deleted with
`purge`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.data.prepare import ENROLLED_IMAGES
from tasks.enrolment.figures import score_table, writer_figures
from tasks.enrolment.model_build import checked_base, embed_info
from tasks.enrolment.record import (
    WRITERS_FOLDER,
    delete_enrolment,
    removed_writers,
    write_removed_writers,
    writer_id,
)
from tasks.enrolment.training_set import fit_without_writer, kept_rows, remember, training_set
from tasks.enrolment.versions import RegisteredVersion, VersionRequest, purge_versions, versions_with_writer
from tasks.enrolment.workspace_state import Change, EnrolSettings, build_and_register, manifest, version_tags
from tasks.enrolment.workspace_state import threshold as calibrated_threshold
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.registration.assemble import CHECKED_IMAGES
from tasks.registration.registry import CHAMPION
from tasks.training.embedding_files import load_split_embeddings
from tasks.training.input_pipeline import read_grey_image
from tasks.workspace.errors import EnrolmentError
from tasks.workspace.paths import ProjectPaths

REMOVE = "remove"
VALIDATION = "val"


@dataclass(frozen=True)
class RemoveResult:
    """What a removal did: the version without the writer, the earlier versions that know it (purged or
    not), and what was deleted from the workspace or recorded."""

    writer: str
    version: RegisteredVersion
    earlier_versions: list[str]
    purged: bool
    deleted_enrolment: bool
    recorded_removal: bool
    reason: str


def check_images(paths: ProjectPaths, rows: Sequence[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """The first validation images of `rows` and their stored embeddings: what the packaged model is checked on."""
    chosen = [row for row in rows if row["split"] == VALIDATION][:CHECKED_IMAGES]
    embedded = load_split_embeddings(paths.embeddings_dir, VALIDATION, chosen)
    images = [read_grey_image(paths.root / row["prepared_path"])[..., 0] for row in chosen]
    return np.stack(images) if images else np.zeros((0, 1, 1), dtype=np.uint8), embedded.clean


def erase(paths: ProjectPaths, writer: str, rows: Sequence[dict[str, str]]) -> tuple[bool, bool]:
    """Delete the writer's enrolment and prepared enrolment images; record a dataset writer as removed.
    Returns (an enrolment was deleted, a dataset writer was recorded)."""
    deleted = delete_enrolment(paths, writer)
    shutil.rmtree(paths.prepared_images_dir / ENROLLED_IMAGES / WRITERS_FOLDER / writer, ignore_errors=True)
    in_dataset = any(row["writer"] == writer and not paths.is_enrolled_reference(row["path"]) for row in rows)
    if in_dataset:
        write_removed_writers(paths, removed_writers(paths) | {writer})
    return deleted, in_dataset


def remove_writer(paths: ProjectPaths, settings: EnrolSettings, name: str, purge: bool = False) -> RemoveResult:
    """Remove writer `name` (module docstring); EnrolmentError, nothing changed, when it is not a writer."""
    writer = writer_id(name)
    rows = manifest(paths)
    training = training_set(paths, rows)
    if writer not in training.classes:
        raise EnrolmentError(f"writer {writer} is not a writer of the model (known: {', '.join(training.classes)})")
    remaining = training.without(writer)
    verifier = fit_without_writer(paths, training, writer, settings.model)
    kept = [row for row in kept_rows(paths, rows) if row["writer"] != writer]
    threshold = calibrated_threshold(paths)
    table = score_table(paths, kept, verifier, remaining.classes)
    figures = writer_figures(table, remaining.classes, remaining.classes, threshold)
    reason = (
        f"writer {writer} removed: the champion must not answer with it (the {figures.images} validation images "
        f"of the other writers: accuracy {figures.accuracy:.3f}, FRR {figures.frr:.3f})"
    )
    request = VersionRequest(
        operation=REMOVE,
        writer=writer,
        references=(),
        classes=remaining.classes,
        alias=CHAMPION,
        reason=reason,
        tags=version_tags(table, kept, threshold),
    )
    info = embed_info(paths)
    base = checked_base(paths.root, info, settings.model.weights, settings.train.seed, EmbeddingSpec.of(settings.model))
    images, embeddings = check_images(paths, kept)
    version = build_and_register(
        paths, settings, base, info, Change(verifier, remaining.classes, images, embeddings, request)
    )
    earlier = versions_with_writer(version.name, writer, excluded=(version.version,))
    if purge:
        purge_versions(version.name, earlier)
    deleted, recorded = erase(paths, writer, rows)
    remember(paths, remaining, settings.model, verifier)
    return RemoveResult(writer, version, earlier, purge, deleted, recorded, reason)

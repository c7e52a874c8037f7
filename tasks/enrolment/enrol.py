"""`sigpipe enrol`: a new writer (or more references of one) added to the model without retraining.

Every reference is checked before anything is written; only the new references go through the frozen
base (checked against the embed stage's digest); the enrolled writer's model in the verifier (= the
ridge head) is solved on the record's stored background views and its references, every other writer's
is kept (`tasks.model.verifier`: enrolled references are never another writer's negatives); the
calibrated threshold and confidence are kept; the
packaged classifier is checked against the verifier on the new references; the version is registered
and signed, champion only when the writers enrolled before keep their validation figures
(`tasks.enrolment.figures`). The record (references, their embeddings) is written last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.enrolment.figures import champion_rule, score_table, writer_figures
from tasks.enrolment.model_build import checked_base, embed_info, embed_references
from tasks.enrolment.record import (
    Enrolment,
    Reference,
    embeddings_file,
    enrolments,
    read_enrolment,
    reference_manifest_path,
    stored_name,
    write_enrolment,
    writer_id,
)
from tasks.enrolment.references import CheckedReference, check_references, reference_files
from tasks.enrolment.training_set import (
    TrainingSet,
    fit_or_remembered,
    fit_with_writer,
    kept_rows,
    remember,
    training_set,
)
from tasks.enrolment.versions import RegisteredVersion, VersionRequest
from tasks.enrolment.workspace_state import (
    Change,
    EnrolSettings,
    build_and_register,
    manifest,
    version_tags,
)
from tasks.enrolment.workspace_state import threshold as calibrated_threshold
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.training.embedding_files import EmbeddedRows, load_embedded_rows, save_embedded_rows
from tasks.workspace.errors import EnrolmentError
from tasks.workspace.paths import ProjectPaths

ENROL = "enrol"
ADD_REFERENCES = "add-references"


@dataclass(frozen=True)
class EnrolResult:
    """What an enrolment did: the writer, how many references it added, the version and why its alias."""

    writer: str
    references: int
    version: RegisteredVersion
    reason: str


def known_signatures(paths: ProjectPaths, rows: Sequence[dict[str, str]]) -> dict[str, str]:
    """SHA-256 -> writer of every image already in the record: the manifest's (kept) and every enrolment's."""
    known = {row["source_sha256"]: row["writer"] for row in kept_rows(paths, rows)}
    known.update({ref.sha256: item.writer for item in enrolments(paths) for ref in item.references})
    return known


def check_writer(writer: str, training: TrainingSet, add_references: bool) -> None:
    """Writer ids stay unique: an existing one only with --add-references, which needs an existing one."""
    exists = writer in training.classes
    if exists and not add_references:
        raise EnrolmentError(
            f"writer {writer} is already enrolled: give another id, or --add-references to add references to it"
        )
    if add_references and not exists:
        raise EnrolmentError(f"writer {writer} is not enrolled: leave out --add-references to enrol it")


def check_count(checked: Sequence[CheckedReference], minimum: int, add_references: bool) -> None:
    """A new writer needs `enrol.min_references` references; --add-references at least one."""
    needed = 1 if add_references else minimum
    if len(checked) < needed:
        raise EnrolmentError(
            f"{len(checked)} reference(s) given: a new writer needs at least enrol.min_references={minimum}"
        )


def recorded(paths: ProjectPaths, writer: str, checked: Sequence[CheckedReference], views: np.ndarray) -> None:
    """Store the references and their embeddings beside the writer's earlier ones (the enrolment record)."""
    earlier = read_enrolment(paths, writer)
    sequence = earlier.sequence if earlier else 1 + max((item.sequence for item in enrolments(paths)), default=0)
    new = tuple(
        Reference(stored_name(item.source.name, item.sha256), item.source.name, item.sha256) for item in checked
    )
    enrolment = Enrolment(writer, sequence, (*(earlier.references if earlier else ()), *new))
    write_enrolment(paths, enrolment, {ref.file: item.source for ref, item in zip(new, checked, strict=True)})
    rows = EmbeddedRows(
        views,
        tuple(reference_manifest_path(paths, writer, ref) for ref in new),
        tuple(i.prepared_sha256 for i in checked),
    )
    stored_file = embeddings_file(paths, writer)
    stored = load_embedded_rows(stored_file) if earlier is not None and stored_file.is_file() else None
    # Stored rows of another embedding (the embed stage ran again since) are all in the manifest, re-embedded
    # there (training_set refuses otherwise, before anything is registered): only the new rows are kept then.
    if stored is not None and stored.views.shape[::2] == views.shape[::2]:
        rows = EmbeddedRows(
            np.concatenate([stored.views, views], axis=1), stored.paths + rows.paths, stored.hashes + rows.hashes
        )
    save_embedded_rows(rows, embeddings_file(paths, writer))


def enrol_writer(
    paths: ProjectPaths,
    settings: EnrolSettings,
    name: str,
    inputs: Sequence[Path],
    add_references: bool = False,
    before_base: Callable[[], None] = lambda: None,
) -> EnrolResult:
    """Enrol writer `name` from the images (or the folder) `inputs`; EnrolmentError when refused, nothing written.

    `before_base` runs once every reference passed its checks, just before TensorFlow is needed (the CLI
    imports it quietly there): a refused enrolment answers without paying for that import."""
    from tasks.data.prepare import settings_from_params

    writer = writer_id(name)
    rows = manifest(paths)
    training = training_set(paths, rows)
    check_writer(writer, training, add_references)
    known = known_signatures(paths, rows)
    checked = check_references(
        reference_files(inputs), writer, known, settings_from_params(settings.prepare), settings.enrol
    )
    check_count(checked, settings.enrol.min_references, add_references)
    info = embed_info(paths)
    if info.image_size != settings.prepare.image_size or info.views != 1 + settings.train.augmented_views:
        raise EnrolmentError(
            "prepare.image_size or train.augmented_views changed since the embed stage ran: run `dvc repro` first"
        )
    before_base()
    base = checked_base(paths.root, info, settings.model.weights, settings.train.seed, EmbeddingSpec.of(settings.model))
    images = np.stack([item.image for item in checked])
    train = settings.train
    hashes = tuple(item.prepared_sha256 for item in checked)
    views = embed_references(
        base, info, images, hashes, settings.augment, train.augmented_views, train.seed, train.embed_batch_size
    )
    enlarged = training.with_writer(writer, views)
    before = fit_or_remembered(paths, training, settings.model)
    verifier = fit_with_writer(before, enlarged, writer, settings.model)
    kept = kept_rows(paths, rows)
    threshold = calibrated_threshold(paths)
    table = score_table(paths, kept, verifier, enlarged.classes)
    others = [item for item in training.classes if item != writer]
    figures_before = writer_figures(
        score_table(paths, kept, before, training.classes), training.classes, others, threshold
    )
    figures_after = writer_figures(table, enlarged.classes, others, threshold)
    alias, reason = champion_rule(figures_before, figures_after, settings.enrol.tolerance)
    request = VersionRequest(
        operation=ADD_REFERENCES if add_references else ENROL,
        writer=writer,
        references=tuple(item.sha256 for item in checked),
        classes=enlarged.classes,
        alias=alias,
        reason=reason,
        tags=version_tags(table, kept, threshold),
    )
    version = build_and_register(
        paths, settings, base, info, Change(verifier, enlarged.classes, images, views[0], request)
    )
    recorded(paths, writer, checked, views)
    remember(paths, enlarged, settings.model, verifier)
    return EnrolResult(writer, len(checked), version, reason)

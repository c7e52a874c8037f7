"""What `sigpipe enrol` and `remove` read from a workspace: its parameters, manifest, calibration, and the
step they share: package the re-solved verifier and register it (`build_and_register`)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tasks.data.manifest import read_manifest
from tasks.enrolment.figures import selection_tags
from tasks.enrolment.model_build import EmbedInfo, check_packaged, packaged_classifier, write_model_files
from tasks.enrolment.versions import RegisteredVersion, VersionRequest, register_version
from tasks.evaluation.scores import ScoreTable
from tasks.model.head import head_from_verifier
from tasks.model.verifier import WriterVerifier
from tasks.registration.packaging import PackagedFiles
from tasks.registration.registry import SELECTION_SPLITS, TAG_METRIC_PREFIX, TAG_SELECTION_MANIFEST, digest_of_rows
from tasks.workspace.config import parse_group, read_params_file
from tasks.workspace.errors import EnrolmentError
from tasks.workspace.params_data import PrepareParams
from tasks.workspace.params_model import (
    AugmentParams,
    EnrolParams,
    ModelParams,
    RegisterParams,
    TrackingParams,
    TrainParams,
)
from tasks.workspace.paths import ProjectPaths

RIDGE_HEAD = "ridge"
REPRO_HINT = "run the pipeline first (`dvc repro`)"


@dataclass(frozen=True)
class EnrolSettings:
    """The parameter groups enrol and remove read."""

    prepare: PrepareParams
    model: ModelParams
    augment: AugmentParams
    train: TrainParams
    enrol: EnrolParams
    register: RegisterParams
    tracking: TrackingParams


def read_settings(paths: ProjectPaths) -> EnrolSettings:
    """Read and validate the groups of params.yaml that enrol and remove use; only the ridge head is re-solvable."""
    params = read_params_file(paths.params_file)
    source = str(paths.params_file)
    groups = {
        "prepare": PrepareParams,
        "model": ModelParams,
        "augment": AugmentParams,
        "train": TrainParams,
        "enrol": EnrolParams,
        "register": RegisterParams,
        "tracking": TrackingParams,
    }
    settings = EnrolSettings(**{group: parse_group(params, group, model, source) for group, model in groups.items()})  # type: ignore[arg-type]
    if settings.model.head != RIDGE_HEAD:
        raise EnrolmentError(
            f"model.head is '{settings.model.head}': only the ridge head (the verifier, solved in closed form) is "
            "re-solved without retraining; set model.head: ridge and run `dvc repro`"
        )
    return settings


def manifest(paths: ProjectPaths) -> list[dict[str, str]]:
    """The prepared manifest, or an error naming `dvc repro`."""
    if not paths.manifest_file.is_file():
        raise EnrolmentError(f"{paths.manifest_file} is missing: {REPRO_HINT}")
    return read_manifest(paths.manifest_file)


def calibration(paths: ProjectPaths, classes: Sequence[str]) -> dict[str, Any]:
    """The calibrate stage's calibration with its threshold and confidence kept, for the writers `classes`."""
    if not paths.calibration_file.is_file():
        raise EnrolmentError(f"{paths.calibration_file} is missing: {REPRO_HINT}")
    content = json.loads(paths.calibration_file.read_text())
    return {**content, "classes": list(classes), "unknown_class_id": len(classes)}


def threshold(paths: ProjectPaths) -> float:
    """The calibrated threshold of a claim's verifier score (kept by enrol and remove)."""
    return float(calibration(paths, ())["threshold"])


def version_tags(table: ScoreTable, kept: Sequence[dict[str, str]], threshold: float) -> dict[str, str]:
    """The figures register compares versions on, and the selection data they were measured on."""
    metrics = {**selection_tags(table), "threshold": threshold}
    return {
        TAG_SELECTION_MANIFEST: digest_of_rows(kept, SELECTION_SPLITS),
        **{f"{TAG_METRIC_PREFIX}{key}": str(value) for key, value in metrics.items()},
    }


@dataclass(frozen=True)
class Change:
    """A re-solved model to package and register, and the images its packaged classifier is checked on."""

    verifier: WriterVerifier
    classes: tuple[str, ...]
    check_images: np.ndarray  # (n, size, size) uint8
    check_embeddings: np.ndarray  # (n, features): their stored clean embeddings
    request: VersionRequest


def build_and_register(
    paths: ProjectPaths, settings: EnrolSettings, base, info: EmbedInfo, change: Change
) -> RegisteredVersion:
    """Package the re-solved head on the checked `base`, check it scores `change.check_images` as the
    verifier scores their embeddings, write the model files to a scratch folder and register them."""
    from tasks.data.prepare import settings_from_params

    classifier = packaged_classifier(
        base, info, head_from_verifier(change.verifier), settings.model.dropout, settings.train.seed
    )
    check_packaged(classifier, change.verifier, change.check_images, change.check_embeddings)
    preprocess = replace(
        settings_from_params(settings.prepare),
        max_pixels=settings.register.max_image_pixels,
        max_image_bytes=settings.register.max_image_bytes,
    )
    with tempfile.TemporaryDirectory(prefix="sigpipe-enrol-") as scratch:
        calibrated = calibration(paths, change.classes)
        files = write_model_files(Path(scratch), classifier, change.verifier, calibrated)
        packaged = PackagedFiles(files["classifier"], files["verifier"], files["calibration"], paths.params_file)
        return register_version(
            paths,
            settings.register.model_name,
            settings.tracking.experiment,
            preprocess,
            settings.register.top_k,
            replace(change.request, files=packaged),
        )

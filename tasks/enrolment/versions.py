"""Registering an enrolment's or a removal's model version, and finding the versions that hold a writer.

A new version is logged, signed and aliased exactly as the register stage does it (a pending tag until
its alias is set, the signature before the alias, the signed alias statement), through the MLflow
client with the configured tracking URI only, so it works on the team's server as on the local store.
Its lineage is in tags: the operation, the parent version (the champion it was derived from), the
writer, the references' SHA-256s and the MLflow run that logged it; `sigpipe.writers` lists its writers.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.data.images import PreprocessSettings
from tasks.registration.packaging import PackagedFiles
from tasks.workspace.paths import ProjectPaths

TAG_OPERATION = "lineage.operation"
TAG_PARENT = "lineage.parent_version"
TAG_WRITER = "lineage.writer"
TAG_REFERENCES = "lineage.reference_sha256"
TAG_RUN = "lineage.run_id"
TAG_WRITERS = "sigpipe.writers"  # the version's writers, comma-separated (also set by the register stage)
WRITER_SEPARATOR = ","
CALIBRATION_ARTIFACT = "artifacts/calibration.json"  # inside a registered version's files


@dataclass(frozen=True)
class VersionRequest:
    """What to register: the files, the change (operation, writer, references), its alias and why, its tags."""

    operation: str
    writer: str
    references: tuple[str, ...]
    classes: tuple[str, ...]
    alias: str
    reason: str
    tags: Mapping[str, str]
    files: PackagedFiles | None = None  # set once the model files are written


@dataclass(frozen=True)
class RegisteredVersion:
    """The version created, its alias, the parent it came from and the MLflow run that logged it."""

    name: str
    version: str
    alias: str
    parent: str | None
    run_id: str


def champion_version(client: Any, name: str) -> str | None:
    """The version the champion alias names now (the parent of a new one), or None."""
    from tasks.registration.registry import current_champion

    champion = current_champion(client, name)
    return None if champion is None else str(champion["version"])


def lineage_tags(request: VersionRequest, parent: str | None, run_id: str) -> dict[str, str]:
    """The tags that say where a version came from."""
    return {
        TAG_OPERATION: request.operation,
        TAG_PARENT: parent or "",
        TAG_WRITER: request.writer,
        TAG_REFERENCES: WRITER_SEPARATOR.join(request.references),
        TAG_RUN: run_id,
        TAG_WRITERS: WRITER_SEPARATOR.join(request.classes),
    }


def register_version(
    paths: ProjectPaths, name: str, experiment: str, settings: PreprocessSettings, top_k: int, request: VersionRequest
) -> RegisteredVersion:
    """Log `request.files` as the packaged pyfunc in a new run, register, sign and alias the version."""
    import mlflow

    from tasks.registration.model_store import record_alias, sign_version, workspace_keys
    from tasks.registration.packaging import log_packaged_model_with_digests
    from tasks.registration.registry import (
        mark_registered,
        pending_tags,
        remove_abandoned_versions,
        version_removed_on_failure,
    )
    from tasks.registration.signing import ensure_signing_key
    from tasks.tracking.runs import ensure_experiment, process_tags, run_name

    if request.files is None:
        raise ValueError("register_version needs the packaged model's files")
    keys = workspace_keys(paths)
    ensure_signing_key(keys)  # an unreadable key fails here, before anything is logged
    experiment_id = ensure_experiment(paths, experiment)
    client = mlflow.tracking.MlflowClient()
    parent = champion_version(client, name)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name(request.operation, request.writer, name), tags=process_tags()
    ) as run:
        model_uri, logged = log_packaged_model_with_digests(request.files, settings, top_k)
        tags = {**request.tags, **lineage_tags(request, parent, run.info.run_id)}
        remove_abandoned_versions(client, name)
        version = str(mlflow.register_model(model_uri, name, tags={**tags, **pending_tags()}).version)
        with version_removed_on_failure(client, name, version):
            sign_version(client, name, version, keys, logged)
            client.update_model_version(name, version, description=f"{request.alias}: {request.reason}")
            client.set_registered_model_alias(name, request.alias, version)
            record_alias(client, name, request.alias, version, keys)
        mark_registered(client, name, version)
        mlflow.log_dict({**tags, "version": version, "alias": request.alias, "reason": request.reason}, "lineage.json")
    return RegisteredVersion(name, version, request.alias, parent, run.info.run_id)


def version_writers(client: Any, name: str, version: Any) -> list[str]:
    """The writers of a registered version: its `sigpipe.writers` tag, else the classes of its calibration."""
    import mlflow

    if TAG_WRITERS in version.tags:
        return [writer for writer in version.tags[TAG_WRITERS].split(WRITER_SEPARATOR) if writer]
    location = client.get_model_version_download_uri(name, version.version)
    with tempfile.TemporaryDirectory(prefix="sigpipe-versions-") as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(f"{location}/{CALIBRATION_ARTIFACT}", dst_path=scratch)
            return [str(writer) for writer in json.loads(Path(path).read_text())["classes"]]
        except (OSError, ValueError, KeyError, mlflow.exceptions.MlflowException):
            return []


def versions_with_writer(name: str, writer: str, excluded: Sequence[str] = ()) -> list[str]:
    """The registered versions of `name` (not `excluded`) whose model knows `writer`, oldest first."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    found = [
        str(version.version)
        for version in client.search_model_versions(f"name = '{name}'")
        if str(version.version) not in excluded and writer in version_writers(client, name, version)
    ]
    return sorted(found, key=int)


def purge_versions(name: str, versions: Sequence[str]) -> None:
    """Delete `versions` of `name` from the registry (their aliases go with them)."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    for version in versions:
        client.delete_model_version(name, version)

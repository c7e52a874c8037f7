"""Registered model versions as data: signed by `register`, checked and read by every client.

The CLI (`predict`, `verify`), the model server (`sigpipe serve`) and batch scoring (`sigpipe score`)
load a version through `load_verified_model`: it resolves the URI to one version, checks the
version's signature (`tasks.registration.signing`), downloads its files, checks each against the signed list,
and only then reads them with this installed package's code: the Keras file in safe mode, the
verifier's arrays without pickle, JSON. Nothing shipped inside the artifact is imported or run
(MLflow's "model from code" file and `code/` folder stay there for users of `mlflow.pyfunc`, which
does run them, and should only be pointed at a registry they trust).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tasks.registration.signing import (
    KeyFiles,
    alias_tags,
    check_files,
    ensure_signing_key,
    folder_digests,
    key_files,
    read_verify_key,
    signature_tags,
    signed_aliases,
    signed_files,
)
from tasks.serving.inference import (
    ARTIFACT_CALIBRATION,
    ARTIFACT_CLASSIFIER,
    ARTIFACT_PREPROCESS,
    ARTIFACT_VERIFIER,
    SignatureClassifier,
)
from tasks.serving.model_files import DIGESTS_FILE_NAME, FILE_KEY, read_json_object, read_model_file
from tasks.workspace.errors import ModelFileError, UntrustedModelError
from tasks.workspace.paths import ProjectPaths

ALIAS_URI = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)")
VERSION_URI = re.compile(r"models:/(?P<name>[^/@]+)/(?P<version>[0-9]+)")
ARTIFACTS_FOLDER = "artifacts"  # where MLflow keeps a pyfunc's artifact files inside the model folder
ONLY_REGISTERED = (
    "only registered versions can be loaded (models:/<name>@<alias> or models:/<name>/<version>): "
    "the signature that makes a model trusted belongs to a registered version"
)


@dataclass(frozen=True)
class LoadedModel:
    """A verified model version, read into memory, with the registry name and version it came from."""

    model: SignatureClassifier
    name: str
    version: str


def workspace_keys(paths: ProjectPaths) -> KeyFiles:
    """The workspace's key pair (`.sigpipe/`), or the files SIGPIPE_SIGNING_KEY / SIGPIPE_VERIFY_KEY name."""
    return key_files(paths.signing_key_file, paths.verify_key_file)


def version_of(client: Any, model_uri: str) -> tuple[str, str]:
    """(registered model name, version number) that `model_uri` names; raises UntrustedModelError for
    a URI that names no registered version (a run's or a logged model's files carry no signature)."""
    if match := VERSION_URI.fullmatch(model_uri):
        return match["name"], match["version"]
    if match := ALIAS_URI.fullmatch(model_uri):
        return match["name"], str(client.get_model_version_by_alias(match["name"], match["alias"]).version)
    raise UntrustedModelError(f"{model_uri}: {ONLY_REGISTERED}")


def download_version(name: str, version: str, destination: Path) -> Path:
    """The files of a registered version, downloaded into `destination` (no code of it runs)."""
    import mlflow

    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(destination))
    )


def artifact_files(folder: Path) -> dict[str, Path]:
    """Artifact name -> file of a downloaded model folder, from the digest file packaged with them."""
    artifacts = folder / ARTIFACTS_FOLDER
    entries = read_model_file(artifacts / DIGESTS_FILE_NAME, "the model's file list", read_json_object)
    files = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get(FILE_KEY), str):
            raise ModelFileError(f"{artifacts / DIGESTS_FILE_NAME}: no file recorded for artifact {name!r}")
        files[name] = artifacts / Path(entry[FILE_KEY]).name
    return files


def read_signature_model(folder: Path) -> SignatureClassifier:
    """The model in a downloaded, verified version folder, read as data: the Keras file in safe mode."""
    import keras

    files = artifact_files(folder)
    missing = [name for name in (ARTIFACT_CLASSIFIER, ARTIFACT_VERIFIER, ARTIFACT_CALIBRATION) if name not in files]
    if missing or ARTIFACT_PREPROCESS not in files:
        raise ModelFileError(f"{folder}: the model has no {', '.join(missing) or ARTIFACT_PREPROCESS} file")
    load = partial(keras.models.load_model, compile=False, safe_mode=True)
    classifier = read_model_file(files[ARTIFACT_CLASSIFIER], "a Keras model", load)
    return SignatureClassifier.with_classifier(
        classifier, files[ARTIFACT_VERIFIER], files[ARTIFACT_CALIBRATION], files[ARTIFACT_PREPROCESS]
    )


def newest_signed_version(client: Any, name: str, public_key: Any) -> str | None:
    """The highest version number of `name` whose signature checks (only register creates those)."""
    numbers = []
    for version in client.search_model_versions(f"name = '{name}'"):
        try:
            signed_files(name, str(version.version), version.tags, public_key)
        except UntrustedModelError:
            continue
        numbers.append(int(version.version))
    return str(max(numbers)) if numbers else None


def check_alias(client: Any, name: str, alias: str, version: str, public_key: Any) -> None:
    """`alias` names `version` as the register stage last set it: its signed alias statement says so and
    is the newest (no later signed version). An alias moved by hand (to any version, signed or not, which
    skips register's "only if better" rule) or a replayed older statement raises UntrustedModelError."""
    label = f"{name}@{alias}"
    statement = signed_aliases(name, client.get_registered_model(name).tags, public_key)
    if statement is None:
        raise UntrustedModelError(
            f"{label}: no alias statement signed by the register stage, so the alias is not trusted; "
            "register again (`dvc repro --force register`) or load an explicit version (models:/<name>/<n>)"
        )
    aliases, as_of = statement
    if aliases.get(alias) != version:
        set_by_register = aliases.get(alias, "no version")
        raise UntrustedModelError(
            f"{label} points at version {version}, but the register stage set it on {set_by_register}: "
            "moved by hand, so refused; point it back, or load an explicit version (models:/<name>/<n>)"
        )
    newest = newest_signed_version(client, name, public_key)
    if newest is not None and int(newest) > int(as_of):
        raise UntrustedModelError(
            f"{label}: the alias statement dates from version {as_of}, but version {newest} was signed later: "
            "an old statement put back, so refused; register again to write a current one"
        )


def record_alias(client: Any, name: str, alias: str, version: str, keys: KeyFiles) -> None:
    """After register sets `alias` on `version`: sign the statement of every alias register has set
    (the previous statement's, if it checks, updated with this one), as of `version`."""
    private_key = ensure_signing_key(keys)
    try:
        previous = signed_aliases(name, client.get_registered_model(name).tags, private_key.public_key())
    except UntrustedModelError:
        previous = None  # a damaged statement is replaced: the aliases it named are trusted no longer
    aliases = {**(previous[0] if previous else {}), alias: str(version)}
    for tag, value in alias_tags(private_key, name, aliases, str(version)).items():
        client.set_registered_model_tag(name, tag, value)


@dataclass(frozen=True)
class VerifiedVersion:
    """A registered version whose signature and files were checked: where its files are, and the
    signed digests they matched (what a copy of the folder elsewhere is checked against again)."""

    name: str
    version: str
    folder: Path
    files: dict[str, str]


@contextmanager
def verified_version(model_uri: str, keys: KeyFiles) -> Iterator[VerifiedVersion]:
    """`model_uri` downloaded into a temporary folder, its signature and every file checked (and, for an
    alias, that register set it there); the folder is removed afterwards."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    name, version = version_of(client, model_uri)
    public_key = read_verify_key(keys)
    expected = signed_files(name, version, client.get_model_version(name, version).tags, public_key)
    if match := ALIAS_URI.fullmatch(model_uri):
        check_alias(client, name, match["alias"], version, public_key)
    with tempfile.TemporaryDirectory(prefix="sigpipe-model-") as scratch:
        folder = download_version(name, version, Path(scratch))
        check_files(name, version, folder, expected)
        yield VerifiedVersion(name, version, folder, expected)


def load_verified_model(model_uri: str, keys: KeyFiles) -> LoadedModel:
    """The model version `model_uri` names, once its signature and files are checked (UntrustedModelError
    otherwise, one line naming the version and the file)."""
    with verified_version(model_uri, keys) as verified:
        return LoadedModel(read_signature_model(verified.folder), verified.name, verified.version)


def sign_version(client: Any, name: str, version: str, keys: KeyFiles, logged: Mapping[str, str] | None = None) -> None:
    """Sign registered `version` of `name` as clients will download it (register's last step before the alias).

    `logged` (artifact file name -> SHA-256, as `register` logged them): the downloaded artifact files must
    be those, else nothing is signed (someone with write access to the artifact store changed them
    between logging and signing)."""
    private_key = ensure_signing_key(keys)
    with tempfile.TemporaryDirectory(prefix="sigpipe-sign-") as scratch:
        files = folder_digests(download_version(name, version, Path(scratch)))
    for file_name, digest in (logged or {}).items():
        if files.get(f"{ARTIFACTS_FOLDER}/{file_name}") != digest:
            raise UntrustedModelError(
                f"{name} version {version}: artifact {file_name} in the registry differs from the one this run "
                "logged, so it is not signed; check who can write to the artifact store, then register again"
            )
    for tag, value in signature_tags(private_key, name, version, files).items():
        client.set_model_version_tag(name, version, tag, value)

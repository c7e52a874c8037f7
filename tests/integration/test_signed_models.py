"""Models are data: a client loads only a version the register stage signed, and runs none of its code.

Issue 27's reproductions, on a real registry, written to directly and over HTTP through a real
`mlflow server` on 127.0.0.1 (a tiny model registered and signed as the register stage does it):
anyone with write access to the registry can register a version whose `pyfunc_model.py` runs their
code, change a signed version's calibration (recomputing its packaged digest), or move the
champion alias by hand. `sigpipe predict`, `verify` and `serve` refuse each with one line naming the
version and the file, and nothing of the artifact runs (a marker file its code would write stays absent).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tasks.serving.model_files import DIGESTS_FILE_NAME
from tasks.workspace.files import sha256_file
from tasks.workspace.paths import ProjectPaths
from tests.integration.test_tracking_server_faults import TrackingServer
from tests.support.registered_model import SIGNATURE_NAME, registered_workspace

MODEL_NAME = "signed-test"
CHAMPION_URI = f"models:/{MODEL_NAME}@champion"
CALIBRATION = {"classes": ["a", "b", "c"], "temperature": 1.0, "threshold": 0.0, "unknown_class_id": 3}
MARKER_NAME = "code-ran.marker"
FORGED_THRESHOLD = -1e9  # accepts every claim


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> ProjectPaths:
    """A workspace whose store holds version 1, signed, as champion."""
    return registered_workspace(tmp_path_factory.mktemp("signed"), MODEL_NAME, CALIBRATION)


@pytest.fixture(scope="module")
def tracking_server(workspace: ProjectPaths) -> Iterator[TrackingServer]:
    """A real `mlflow server` on 127.0.0.1 over the workspace's store: the registry an attacker reaches."""
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    server = TrackingServer(workspace.mlruns_dir, {**environment, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    server.start()
    yield server
    server.kill()


@pytest.fixture(params=["store", "server"])
def client(
    request: pytest.FixtureRequest, workspace: ProjectPaths, monkeypatch: pytest.MonkeyPatch
) -> Iterator[object]:
    """An MLflow client on the workspace's SQLite store, or over HTTP on a tracking server of it (the
    CLI then uses the server too, through MLFLOW_TRACKING_URI); champion is put back on version 1 after."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if request.param == "server":
        uri = request.getfixturevalue("tracking_server").url
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    else:
        uri = workspace.mlflow_tracking_uri
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    yield client
    client.set_registered_model_alias(MODEL_NAME, "champion", "1")


def version_folder(workspace: ProjectPaths, version: str = "1") -> Path:
    """A copy of a version's files, downloaded from the registry into a new folder of the workspace."""
    import tempfile

    from tasks.registration.model_store import download_version

    return download_version(MODEL_NAME, version, Path(tempfile.mkdtemp(dir=workspace.root)))


def stored_artifact(client: object, name: str) -> Path:
    """Version 1's own copy of artifact file `name` in the store (not a downloaded copy): its logged
    model's folder, which the workspace's store keeps on this disk."""
    from urllib.parse import urlparse

    logged_model = client.get_logged_model(client.get_model_version(MODEL_NAME, "1").source.removeprefix("models:/"))
    return Path(urlparse(logged_model.artifact_location).path) / "artifacts" / name


def register_folder(client: object, folder: Path, as_champion: bool = True, tags: dict[str, str] | None = None) -> str:
    """Upload `folder` as a run's artifacts and register it as a new version, as anyone with registry
    access can (the same API calls over HTTP as on the store); returns its number."""
    experiment = client.get_experiment_by_name(MODEL_NAME).experiment_id
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    source = f"{run.info.artifact_uri}/model"
    version = client.create_model_version(MODEL_NAME, source, run_id=run.info.run_id, tags=tags or {})
    if as_champion:
        client.set_registered_model_alias(MODEL_NAME, "champion", version.version)
    return str(version.version)


def poisoned_copy(workspace: ProjectPaths) -> tuple[Path, Path]:
    """Version 1's files with one line appended to the model-from-code file that MLflow runs on load."""
    folder = version_folder(workspace)
    marker = workspace.root / MARKER_NAME
    with (folder / "pyfunc_model.py").open("a", encoding="utf-8") as handle:
        handle.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    return folder, marker


def run_cli(workspace: ProjectPaths, *arguments: str) -> tuple[int, list[str]]:
    """A `sigpipe` command in this process; its exit code and its error lines."""
    from tasks.cli.app import app

    result = CliRunner().invoke(app, [*arguments, "-p", str(workspace.params_file)])
    return result.exit_code, [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_the_signed_champion_loads_and_answers(workspace: ProjectPaths, client: object) -> None:
    code, errors = run_cli(workspace, "predict", str(workspace.root / SIGNATURE_NAME))
    assert code == 0 and errors == []


def test_a_poisoned_version_moved_to_champion_is_refused_and_runs_nothing(
    workspace: ProjectPaths, client: object
) -> None:
    import mlflow

    folder, marker = poisoned_copy(workspace)
    version = register_folder(client, folder)
    for command in (
        ["predict", str(workspace.root / SIGNATURE_NAME)],
        ["verify", "-w", "a", str(workspace.root / SIGNATURE_NAME)],
        ["serve"],
    ):
        code, errors = run_cli(workspace, *command)
        assert code == 1 and len(errors) == 1, (command, errors)
        assert f"{MODEL_NAME} version {version} is not signed by the register stage" in errors[0]
        assert not marker.exists()
    # The poison is real: MLflow's own pyfunc loader runs the appended line (why clients do not use it).
    mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
    assert marker.read_text() == "ran"
    marker.unlink()


def test_a_copy_of_the_signature_on_another_version_is_refused(workspace: ProjectPaths, client: object) -> None:
    """Signed tags copied onto a new version holding version 1's exact files: the version number is signed."""
    from tasks.registration.signing import TAG_SIGNATURE, TAG_SIGNED_FILES, TAG_SIGNING_KEY

    tags = client.get_model_version(MODEL_NAME, "1").tags
    copied = {name: tags[name] for name in (TAG_SIGNATURE, TAG_SIGNED_FILES, TAG_SIGNING_KEY)}
    version = register_folder(client, version_folder(workspace), tags=copied)
    code, errors = run_cli(workspace, "predict", str(workspace.root / SIGNATURE_NAME))
    assert code == 1 and len(errors) == 1
    assert f"{MODEL_NAME} version {version}: its signature does not match" in errors[0]


def test_a_tampered_calibration_with_its_digest_recomputed_is_refused(workspace: ProjectPaths, client: object) -> None:
    """Version 1's stored calibration changed to accept every claim, its packaged digest made to agree."""
    calibration = stored_artifact(client, "calibration.json")
    digests = stored_artifact(client, DIGESTS_FILE_NAME)
    originals = {path: path.read_bytes() for path in (calibration, digests)}
    try:
        calibration.write_text(json.dumps({**CALIBRATION, "threshold": FORGED_THRESHOLD}))
        recorded = json.loads(digests.read_text())
        recorded["calibration"]["sha256"] = sha256_file(calibration)
        digests.write_text(json.dumps(recorded))
        code, errors = run_cli(workspace, "verify", "-w", "b", str(workspace.root / SIGNATURE_NAME))
    finally:
        for path, content in originals.items():
            path.write_bytes(content)
    assert code == 1 and len(errors) == 1
    assert "file artifacts/calibration.json differs from the one the register stage signed" in errors[0]


def test_a_version_signed_with_another_key_is_refused(
    workspace: ProjectPaths, client: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.registration.model_store import sign_version
    from tasks.registration.signing import KeyFiles

    version = register_folder(client, version_folder(workspace))
    sign_version(client, MODEL_NAME, version, KeyFiles(tmp_path / "other.key", tmp_path / "other.pub"))
    code, errors = run_cli(workspace, "predict", str(workspace.root / SIGNATURE_NAME))
    assert code == 1 and "its signature does not match" in errors[0]
    # A client that trusts that key (SIGPIPE_VERIFY_KEY) accepts the version, named explicitly (the
    # champion alias was moved by hand: register's statement, signed with the other key, does not name it).
    monkeypatch.setenv("SIGPIPE_VERIFY_KEY", str(tmp_path / "other.pub"))
    explicit = ["--model", f"models:/{MODEL_NAME}/{version}", str(workspace.root / SIGNATURE_NAME)]
    assert run_cli(workspace, "predict", *explicit) == (0, [])


def test_a_run_uri_is_refused_because_only_registered_versions_are_signed(
    workspace: ProjectPaths, client: object
) -> None:
    source = client.get_model_version(MODEL_NAME, "1").source
    code, errors = run_cli(workspace, "predict", "--model", source, str(workspace.root / SIGNATURE_NAME))
    assert code == 1 and "only registered versions can be loaded" in errors[0]


def test_even_a_signed_version_runs_none_of_its_code(workspace: ProjectPaths, client: object) -> None:
    """A poisoned copy that the register key did sign (as if the key were misused): clients still only
    read its files as data, so it answers and the appended line never runs."""
    from tasks.registration.model_store import sign_version, workspace_keys

    folder, marker = poisoned_copy(workspace)
    version = register_folder(client, folder, as_champion=False)
    sign_version(client, MODEL_NAME, version, workspace_keys(workspace))
    try:
        model = ["--model", f"models:/{MODEL_NAME}/{version}"]
        code, errors = run_cli(workspace, "predict", *model, str(workspace.root / SIGNATURE_NAME))
    finally:
        client.delete_model_version(MODEL_NAME, version)
    assert (code, errors) == (0, []) and not marker.exists()


def test_champion_moved_by_hand_to_a_signed_version_is_refused(workspace: ProjectPaths, client: object) -> None:
    """A signed version register left as challenger, made champion by hand (skipping "only if better")."""
    from tasks.registration.model_store import record_alias, sign_version, workspace_keys

    version = register_folder(client, version_folder(workspace), as_champion=False)
    sign_version(client, MODEL_NAME, version, workspace_keys(workspace))
    record_alias(client, MODEL_NAME, "challenger", version, workspace_keys(workspace))  # as register does
    try:
        assert run_cli(workspace, "predict", str(workspace.root / SIGNATURE_NAME)) == (0, [])  # champion: v1
        client.set_registered_model_alias(MODEL_NAME, "champion", version)  # by hand
        code, errors = run_cli(workspace, "predict", str(workspace.root / SIGNATURE_NAME))
        assert code == 1 and len(errors) == 1
        assert f"{MODEL_NAME}@champion points at version {version}, but the register stage set it on 1" in errors[0]
        explicit = ["--model", f"models:/{MODEL_NAME}/{version}", str(workspace.root / SIGNATURE_NAME)]
        assert run_cli(workspace, "predict", *explicit) == (0, [])  # the version itself is trusted
    finally:
        client.delete_model_version(MODEL_NAME, version)


def test_an_old_alias_statement_put_back_is_refused(workspace: ProjectPaths, client: object) -> None:
    """Replay: the statement from when version 1 was newest, restored after register signed a later one."""
    from tasks.registration.model_store import record_alias, sign_version, workspace_keys
    from tasks.registration.signing import TAG_ALIASES, TAG_ALIASES_SIGNATURE

    old = {tag: client.get_registered_model(MODEL_NAME).tags[tag] for tag in (TAG_ALIASES, TAG_ALIASES_SIGNATURE)}
    version = register_folder(client, version_folder(workspace), as_champion=False)
    sign_version(client, MODEL_NAME, version, workspace_keys(workspace))
    record_alias(client, MODEL_NAME, "challenger", version, workspace_keys(workspace))
    try:
        assert run_cli(workspace, "predict", str(workspace.root / SIGNATURE_NAME)) == (0, [])
        for tag, value in old.items():
            client.set_registered_model_tag(MODEL_NAME, tag, value)
        code, errors = run_cli(workspace, "predict", str(workspace.root / SIGNATURE_NAME))
        assert code == 1 and f"but version {version} was signed later: an old statement put back" in errors[0]
    finally:
        client.delete_model_version(MODEL_NAME, version)


def test_register_signs_only_the_artifacts_it_logged(workspace: ProjectPaths, client: object) -> None:
    """Artifacts changed in the store between logging and signing: nothing is signed."""
    from tasks.registration.model_store import sign_version, workspace_keys
    from tasks.registration.signing import TAG_SIGNATURE
    from tasks.workspace.errors import UntrustedModelError

    version = register_folder(client, version_folder(workspace), as_champion=False)
    logged = {"calibration.json": "0" * 64}  # what this run logged differs from what the registry holds
    with pytest.raises(UntrustedModelError, match="differs from the one this run logged, so it is not signed"):
        sign_version(client, MODEL_NAME, version, workspace_keys(workspace), logged)
    assert TAG_SIGNATURE not in client.get_model_version(MODEL_NAME, version).tags

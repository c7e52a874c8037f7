"""A workspace whose MLflow store holds a tiny packaged model registered as champion: what the CLI
and integrity tests load, built the way the register stage packages a model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from PIL import Image, ImageDraw

from tasks.data.images import PreprocessSettings
from tasks.model.verifier import save_verifier
from tasks.workspace.paths import ProjectPaths
from tests.conftest import PROJECT_ROOT, edit_params
from tests.unit.test_inference import SETTINGS, tiny_classifier, tiny_verifier

SIGNATURE_NAME = "signature.png"  # the test image, in the workspace's root
SIGNATURE_CANVAS = (120, 60)
SIGNATURE_STROKE = [(10, 40), (40, 10), (70, 50), (110, 15)]
PAPER, INK, STROKE_WIDTH = 250, 20, 4
TOP_K = 2


def registered_workspace(
    root: Path, model_name: str, calibration: Mapping[str, object], settings: PreprocessSettings = SETTINGS
) -> ProjectPaths:
    """A workspace in `root`: the tiny classifier and verifier with `calibration`, packaged and
        registered as `model_name`@champion (also the workspace's `register.model_name`, so it is the
        CLI's default model), and a signature image `SIGNATURE_NAME`. The version is signed as the register
    stage signs it, with the workspace's key pair (created in `.sigpipe/`)."""
    import mlflow

    paths = ProjectPaths.from_root(root)
    paths.classifier_file.parent.mkdir(parents=True, exist_ok=True)
    tiny_classifier().save(paths.classifier_file)
    save_verifier(tiny_verifier(), paths.verifier_file)
    paths.calibration_file.parent.mkdir(parents=True, exist_ok=True)
    paths.calibration_file.write_text(json.dumps(calibration))
    shutil.copy(PROJECT_ROOT / "params.yaml", paths.params_file)
    edit_params(paths.params_file, {"register": {"model_name": model_name}})
    image = Image.new("L", SIGNATURE_CANVAS, PAPER)
    ImageDraw.Draw(image).line(SIGNATURE_STROKE, fill=INK, width=STROKE_WIDTH)
    image.save(paths.root / SIGNATURE_NAME)
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri)
    mlflow.create_experiment(model_name, artifact_location=(paths.mlruns_dir / "artifacts").as_uri())
    version = register_version(paths, model_name, settings)
    move_alias(paths, model_name, version)
    return paths


def register_version(
    paths: ProjectPaths, model_name: str, settings: PreprocessSettings = SETTINGS, signed: bool = True
) -> str:
    """One more version of `model_name` in `paths`' store (whose experiment `registered_workspace` made),
    packaged from the workspace's model files, signed as register signs it unless `signed` is False; no
    alias moves. Returns its number."""
    import mlflow

    from tasks.registration.model_store import sign_version, workspace_keys
    from tasks.registration.packaging import log_packaged_model_with_digests

    experiment = mlflow.get_experiment_by_name(model_name)
    assert experiment is not None, f"no experiment {model_name}: make the workspace with registered_workspace"
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        model_uri, logged = log_packaged_model_with_digests(paths, settings, TOP_K)
    version = str(mlflow.register_model(model_uri, model_name).version)
    if signed:
        sign_version(mlflow.tracking.MlflowClient(), model_name, version, workspace_keys(paths), logged)
    return version


def move_alias(paths: ProjectPaths, model_name: str, version: str, by_register: bool = True) -> None:
    """Point `model_name`@champion at `version`: as the register stage does (with its signed alias
    statement), or by hand (the registry's API alone) when `by_register` is False."""
    import mlflow

    from tasks.registration.model_store import record_alias, workspace_keys

    client = mlflow.tracking.MlflowClient()
    client.set_registered_model_alias(model_name, "champion", version)
    if by_register:
        record_alias(client, model_name, "champion", version, workspace_keys(paths))


def stored_artifact(model_name: str, version: str, file_name: str) -> Path:
    """The store's own copy of artifact `file_name` of a version (its logged model's folder, on this disk)."""
    from urllib.parse import urlparse

    import mlflow

    client = mlflow.tracking.MlflowClient()
    source = client.get_model_version(model_name, version).source
    logged_model = client.get_logged_model(source.removeprefix("models:/"))
    return Path(urlparse(logged_model.artifact_location).path) / "artifacts" / file_name

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

    from tasks.registration.model_store import record_alias, sign_version, workspace_keys
    from tasks.registration.packaging import log_packaged_model_with_digests

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
    experiment = mlflow.create_experiment(model_name, artifact_location=(paths.mlruns_dir / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        model_uri, logged = log_packaged_model_with_digests(paths, settings, TOP_K)
    version = mlflow.register_model(model_uri, model_name)
    client = mlflow.tracking.MlflowClient()
    sign_version(client, model_name, str(version.version), workspace_keys(paths), logged)
    client.set_registered_model_alias(model_name, "champion", version.version)
    record_alias(client, model_name, "champion", str(version.version), workspace_keys(paths))
    return paths

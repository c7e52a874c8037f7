"""MLflow helpers: one store per workspace (SQLite under mlruns/), flat params, per-epoch metrics.

`MLFLOW_TRACKING_URI`, when set, wins over the local store, so the same code logs to a team's
tracking server. Nothing here runs at import time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from tasks.files import sha256_file
from tasks.paths import ProjectPaths

TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"


def tracking_uri(paths: ProjectPaths) -> str:
    """The tracking URI: the environment's if set, else the workspace's SQLite store (absolute)."""
    return os.environ.get(TRACKING_URI_VARIABLE) or paths.mlflow_tracking_uri


def ensure_experiment(paths: ProjectPaths, name: str) -> str:
    """Point MLflow at the store and return the id of experiment `name`, creating it if needed.

    In the local store, artifacts go to `mlruns/artifacts/` beside the database.
    """
    import mlflow

    uri = tracking_uri(paths)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = (paths.mlruns_dir / "artifacts").as_uri() if uri == paths.mlflow_tracking_uri else None
    paths.mlruns_dir.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(name, artifact_location=artifact_location)


def flatten_params(groups: Mapping[str, BaseModel | Mapping[str, object]]) -> dict[str, str]:
    """`{"train": TrainParams(...)}` to `{"train.epochs": "10", ...}`, as MLflow params."""
    flat: dict[str, str] = {}
    for group, values in groups.items():
        items = values.model_dump() if isinstance(values, BaseModel) else dict(values)
        for key, value in items.items():
            flat[f"{group}.{key}"] = str(value)
    return flat


def epoch_logger():  # -> keras.callbacks.Callback
    """A Keras callback that logs every epoch's metrics to the active MLflow run, step = epoch."""
    import keras
    import mlflow

    class MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            mlflow.log_metrics({name: float(value) for name, value in (logs or {}).items()}, step=epoch)

    return MlflowEpochLogger()


def parent_run_id(train_run_file: Path) -> str | None:
    """The training run that later stages nest their runs under, if training has logged one."""
    import json

    if not train_run_file.is_file():
        return None
    return json.loads(train_run_file.read_text()).get("run_id")


def data_version(manifest_file: Path) -> str:
    """The data version: SHA-256 of the manifest (which holds every image's own hash)."""
    return sha256_file(manifest_file)


MODEL_REQUIREMENTS = ("tensorflow-cpu", "tensorflow", "keras", "numpy", "pillow", "pandas", "pydantic")


def model_requirements() -> list[str]:
    """Pinned requirements of a logged model, from what is installed.

    Given explicitly, they spare MLflow its requirement inference, which loads the model again in a
    subprocess (tens of seconds for InceptionV3 on 2 cores).
    """
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in MODEL_REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pinned


def loggable_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """The top-level finite numbers of a metrics dict, as MLflow metrics (flags, nulls, NaN and
    nested blocks left out: they stay in the JSON file logged beside them)."""
    return {
        name: float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }

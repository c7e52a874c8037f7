"""MLflow helpers: one store per workspace (SQLite under mlruns/), flat params, per-epoch metrics.

`MLFLOW_TRACKING_URI`, when set, wins over the local store, so the same code logs to a team's
tracking server. Nothing here runs at import time.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from tasks.runtime.processes import is_alive
from tasks.tracking.server import TRACKING_URI_VARIABLE, check_tracking_server
from tasks.workspace.errors import ArtifactStoreError
from tasks.workspace.files import redacted_url, sha256_file
from tasks.workspace.paths import ProjectPaths

# The process that owns a run, so that a run left RUNNING by a killed process can be ended later.
TAG_PID = "sigpipe.pid"
TAG_HOST = "sigpipe.host"
RUNNING_FILTER = "attributes.status = 'RUNNING'"
KILLED = "KILLED"
# The experiment tag MLflow's UI reads (and its experiment-kind selector writes) for the kind of
# work an experiment holds: "custom_model_development" is classic ML (runs, metrics, charts),
# where an untagged experiment may open on the GenAI views (traces, assistant).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML_KIND = "custom_model_development"
# MLflow 3.17's UI shows its GenAI or its classic-ML views by a switch in its sidebar, which the
# browser remembers (GenAI at first); a link with this query opens in the classic-ML views.
UI_CLASSIC_ML_QUERY = "workflowType=machine_learning"
# Run names read "train · mlp head · cached · 150 px · data 3f2a1c": the stage, then what tells runs apart.
RUN_NAME_SEPARATOR = " · "
DATA_VERSION_SHOWN = 6  # leading characters of the data version (manifest SHA-256) in a run name


def tracking_uri(paths: ProjectPaths) -> str:
    """The tracking URI: the environment's if set, else the workspace's SQLite store (absolute)."""
    return os.environ.get(TRACKING_URI_VARIABLE) or paths.mlflow_tracking_uri


def open_local_store(paths: ProjectPaths) -> None:
    """Open the workspace's own tracking store now, creating its database in a fresh workspace (MLflow's
    migrations, about a second here). MLflow keeps one store per URI for the life of the process, so the
    pipeline flow does this while its Prefect server starts instead of in its first stage that logs. A
    tracking server (`MLFLOW_TRACKING_URI`) is left to the stages, which check it and say what is wrong.
    It is opened from the workspace's root, as the stages open it: MLflow places a new store's Default
    experiment under the working directory's `mlruns/`."""
    import contextlib

    from mlflow.tracking import MlflowClient

    if tracking_uri(paths) != paths.mlflow_tracking_uri:
        return
    paths.mlruns_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(paths.root):
        MlflowClient(tracking_uri=paths.mlflow_tracking_uri)


def ensure_experiment(paths: ProjectPaths, name: str) -> str:
    """Point MLflow at the store and return the id of experiment `name`, creating it if needed.

    In the local store, artifacts go to `mlruns/artifacts/` beside the database. The experiment
    is marked classic ML (`EXPERIMENT_KIND_TAG`) when created, and so is an existing one that has
    no kind yet (a kind someone chose in the UI is kept).
    """
    import mlflow

    uri = tracking_uri(paths)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            mlflow.tracking.MlflowClient().set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML_KIND
            )
        return experiment.experiment_id
    artifact_location = (paths.mlruns_dir / "artifacts").as_uri() if uri == paths.mlflow_tracking_uri else None
    paths.mlruns_dir.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(
        name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: CLASSIC_ML_KIND}
    )


def run_ui_link(ui_url: str, experiment_id: str, run_id: str) -> str:
    """A link to a run in the MLflow UI at `ui_url`, opening in the classic-ML views."""
    return f"{ui_url}/#/experiments/{experiment_id}/runs/{run_id}?{UI_CLASSIC_ML_QUERY}"


def run_name(stage: str, *details: str) -> str:
    """A run's name from its stage and what tells it apart (empty details left out), e.g.
    "train · mlp head · cached · 150 px · data 3f2a1c"."""
    return RUN_NAME_SEPARATOR.join((stage, *(detail for detail in details if detail)))


def data_label(digest: str) -> str:
    """The data version as shown in a run name: "data " and the first characters of its digest."""
    return f"data {digest[:DATA_VERSION_SHOWN]}"


def recorded_data_version(train_run_file: Path) -> str | None:
    """The data version the training run recorded (in `models/train_run.json`), if any."""
    import json

    if not train_run_file.is_file():
        return None
    return json.loads(train_run_file.read_text()).get("data_version")


def flatten_params(groups: Mapping[str, BaseModel | Mapping[str, object]]) -> dict[str, str]:
    """`{"train": TrainParams(...)}` to `{"train.epochs": "10", ...}`, as MLflow params; a URL's
    credentials and query (a token) are logged as `***` (`redacted_url`)."""
    flat: dict[str, str] = {}
    for group, values in groups.items():
        items = values.model_dump() if isinstance(values, BaseModel) else dict(values)
        for key, value in items.items():
            flat[f"{group}.{key}"] = redacted_url(str(value))
    return flat


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


def process_tags() -> dict[str, str]:
    """Tags naming the process that owns a run (pid and host), for `end_abandoned_runs`."""
    return {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}


def owner_is_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process named by `process_tags` in `tags` ran on this host and is gone.

    Anything not tagged by this host's processes, this very process, or a live process with the same
    pid (a reused pid errs on the safe side) counts as not gone.
    """
    pid = tags.get(TAG_PID, "")
    if tags.get(TAG_HOST) != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return not is_alive(int(pid))


def end_abandoned_runs(experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING runs of the experiment whose owning process is gone.

    A process killed with `kill -9` (or whose parent died) cannot end its run, which would stay
    RUNNING for good. Only runs tagged by `process_tags` on this host are judged; a live process
    with the same pid keeps its run RUNNING (a reused pid errs on the safe side). Returns the ids
    of the runs ended.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ended = []
    for run in client.search_runs([experiment_id], filter_string=RUNNING_FILTER):
        if not owner_is_gone(run.data.tags):
            continue
        client.set_terminated(run.info.run_id, status=KILLED)
        ended.append(run.info.run_id)
        pid = run.data.tags[TAG_PID]
        print(f"MLflow run {run.info.run_id} was left RUNNING by process {pid}, which is gone: marked {KILLED}")
    return ended


def os_error_reason(error: OSError) -> str:
    """The reason of an OSError in a few words; `shutil.copytree` gathers one error per file."""
    if error.strerror:
        return error.strerror
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list) and error.args[0]:
        return str(error.args[0][0][-1])
    return str(error)


def last_logged_model():  # -> mlflow.entities.LoggedModel | None
    """The model this process logged last, or None: MLflow remembers its id across tracking stores,
    so after a switch of tracking URI (a test, a notebook) the id names a model this store lacks."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.last_logged_model()
    except MlflowException:
        return None


@contextmanager
def model_artifacts_removed_on_failure(what: str) -> Iterator[None]:
    """Around a `log_model` call: if it fails, delete what the new logged model had written.

    MLflow marks a model whose logging failed FAILED but leaves its partly written files (59 MB
    after a full disk). An OSError (no space, read-only store) becomes one ArtifactStoreError line.
    The active run then ends FAILED through its `with mlflow.start_run()` block.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    before = last_logged_model()
    try:
        yield
    except Exception as error:
        model = last_logged_model()
        location, cleanup = "the artifact store", "its partial files were removed"
        if model is not None and (before is None or model.model_id != before.model_id):
            location = model.artifact_location
            try:
                get_artifact_repository(model.artifact_location).delete_artifacts()
            except (OSError, MlflowException) as cleanup_error:
                cleanup = f"removing its partial files failed too ({cleanup_error}); delete {location} by hand"
        if isinstance(error, OSError):
            raise ArtifactStoreError(
                f"cannot write the {what} to {location}: {os_error_reason(error)}; {cleanup}. "
                "Free space (or fix the store's permissions) and run the stage again."
            ) from error
        raise

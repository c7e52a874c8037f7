"""What every stage entry point shares: reading the parameter file and turning known errors
into one clear line on stderr instead of a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import (
    ArchiveLimitError,
    ArtifactStoreError,
    CalibrationError,
    ConfigError,
    DownloadError,
    EmbeddingsError,
    EvaluationError,
    LayoutError,
    ModelFileError,
    ModelInputError,
    NotAnArchiveError,
    PipelineBusyError,
    StageFailedError,
    TrackingServerLostError,
    TrainingBusyError,
    TrainingDataError,
    UnsafeArchiveError,
    VerifierError,
    WeightsError,
)
from tasks.lifeline import die_with_parent, start_guarded_prefect_server
from tasks.paths import PARAMS_FILE_NAME, ProjectPaths
from tasks.tracking_server import tracking_server_loss_explained

if TYPE_CHECKING:
    from prefect import Flow

USER_ERRORS = (
    ConfigError,
    DownloadError,
    EmbeddingsError,
    LayoutError,
    UnsafeArchiveError,
    ArchiveLimitError,
    NotAnArchiveError,
    TrainingDataError,
    WeightsError,
    EvaluationError,
    CalibrationError,
    VerifierError,
    PipelineBusyError,
    StageFailedError,
    ModelFileError,
    TrainingBusyError,
    ArtifactStoreError,
    ModelInputError,
    TrackingServerLostError,
)
QUIET_ENVIRONMENT = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # oneDNN kernels measured 10-20% faster for the frozen base on these CPUs (DESIGN section 4).
    "TF_ENABLE_ONEDNN_OPTS": "1",
}

# The pipeline flow tells each stage process which of its task runs the stage's flow run belongs
# under (Prefect links a subflow run to its parent flow run through a task run of the parent),
# and the pipeline run's name, which the stage's run name repeats.
PARENT_TASK_RUN_VARIABLE = "SIGPIPE_PARENT_TASK_RUN_ID"
PIPELINE_RUN_VARIABLE = "SIGPIPE_PIPELINE_RUN_NAME"
# What a stage's flow run is named after: the parameters that say what ran (format_map of params.yaml).
STAGE_RUN_DETAILS = {
    "download": "{data[source]} data, {data[layout]} layout",
    "prepare": "{prepare[image_size]} px",
    "embed": "{prepare[image_size]} px, {train[augmented_views]} augmented views",
    "train": "{model[head]} head, {train[mode]}, {prepare[image_size]} px, up to {train[epochs]} epochs",
    "evaluate": "{prepare[image_size]} px, test split",
    "calibrate": "{calibrate[objective]} threshold",
    "register": "{register[model_name]}",
}
# The ridge head is solved in closed form: train.mode and the epochs do not apply to it.
RIDGE_TRAIN_DETAILS = "ridge head, closed form, {prepare[image_size]} px"
PIPELINE_RUN_SEPARATOR = " · "
STAGE_PARAMETER = "params_file"  # the one parameter of every stage flow


def stage_run_name(stage: str, params_file: str, pipeline_run: str | None = None) -> str:
    """The name of a stage's flow run, e.g. "train (mlp head, cached, 150 px, up to 100 epochs) · witty-ant":
    what ran, with which settings, and in which pipeline run (when it ran in one).

    A name never stops a run: when params.yaml cannot be read, the name is the stage's alone.
    """
    from tasks.config import read_params_file

    try:
        params = read_params_file(Path(params_file))
        ridge = stage == "train" and params["model"]["head"] == "ridge"
        name = f"{stage} ({(RIDGE_TRAIN_DETAILS if ridge else STAGE_RUN_DETAILS[stage]).format_map(params)})"
    except (KeyError, IndexError, TypeError, ConfigError):
        name = stage
    return f"{name}{PIPELINE_RUN_SEPARATOR}{pipeline_run}" if pipeline_run else name


def current_stage_run_name() -> str:
    """`flow_run_name` of every stage flow: `stage_run_name` of the flow run being started."""
    from prefect.runtime import flow_run

    return stage_run_name(
        flow_run.flow_name, flow_run.parameters[STAGE_PARAMETER], os.environ.get(PIPELINE_RUN_VARIABLE)
    )


def call_stage(stage: Flow[..., Any], params_file: str) -> object:
    """Run a stage flow on `params_file`; under the pipeline flow, as a subflow run of its stage task.

    When `PARENT_TASK_RUN_VARIABLE` names a task run (the pipeline flow sets it for the `dvc repro`
    it starts), the flow run is created here with that task run as its parent, as Prefect's engine
    does for a subflow called in-process, and run through the same engine (`run_flow`). It is
    created only when the stage actually runs, so a stage DVC skips leaves no flow run behind.
    """
    parent = os.environ.get(PARENT_TASK_RUN_VARIABLE)
    if not parent:
        return stage(params_file)
    from uuid import UUID

    from prefect import get_client
    from prefect.flow_engine import run_flow

    try:
        parent_task_run_id = UUID(parent)
    except ValueError:
        raise ConfigError(
            f"{PARENT_TASK_RUN_VARIABLE}={parent!r} is not a Prefect task run id: unset it (the pipeline flow sets it)"
        ) from None
    parameters: dict[str, Any] = {STAGE_PARAMETER: params_file}
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(
            stage,
            name=stage_run_name(stage.name, params_file, os.environ.get(PIPELINE_RUN_VARIABLE)),
            parameters=stage.serialize_parameters(parameters),
            parent_task_run_id=parent_task_run_id,
        )
    return run_flow(stage, flow_run=flow_run, parameters=parameters)


def workspace_paths(params_file: str) -> ProjectPaths:
    """Paths of the workspace whose parameter file is `params_file` (the folder that holds it)."""
    return ProjectPaths.from_root(Path(params_file).resolve().parent)


def default_params_file() -> str:
    """`params.yaml` in the working directory, where `dvc repro` runs every stage."""
    return str(Path.cwd() / PARAMS_FILE_NAME)


def quiet_environment() -> None:
    """Turn telemetry off for libraries that read it from the environment, unless the user set it."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def run_stage(stage: Flow[..., Any], params_file: str) -> None:
    """Run a stage flow on `params_file`; on a user error print one line and exit with code 1.

    Under DVC the stage stops when DVC dies, and Prefect's temporary API server (if any) is
    started up front with a watcher, so that neither outlives the run (`tasks.lifeline`). A tracking
    server lost mid-stage is one of those user errors (`tasks.tracking_server.tracking_server_loss_explained`).
    """
    quiet_environment()
    die_with_parent()
    start_guarded_prefect_server()
    try:
        with tracking_server_loss_explained(stage.name):
            call_stage(stage, params_file)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def run_entry_point(stage: Flow[..., Any]) -> None:
    """Run a stage flow on `params.yaml` of the working directory (how `dvc repro` calls it)."""
    run_stage(stage, default_params_file())

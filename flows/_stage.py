"""What every stage entry point shares: reading the parameter file and turning known errors
into one clear line on stderr instead of a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.runtime.exit import no_collection_at_exit
from tasks.runtime.lifeline import die_with_parent
from tasks.tracking.server import tracking_server_loss_explained
from tasks.workspace.errors import (
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
from tasks.workspace.paths import PARAMS_FILE_NAME, ProjectPaths
from tasks.workspace.prefect_home import prefect_api_certainly_unset

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

# What a stage's flow run is named after: the parameters that say what ran (format_map of params.yaml).
STAGE_RUN_DETAILS = {
    "download": "{data[source]} data, {data[layout]} layout",
    "prepare": "{prepare[image_size]} px",
    "embed": "{prepare[image_size]} px, {train[augmented_views]} augmented views",
    "train": "{model[head]} head, {train[mode]}, {prepare[image_size]} px, up to {train[epochs]} epochs",
    "evaluate": "{prepare[image_size]} px, test split",
    "calibrate": "{calibrate[objective]} threshold",
    "package": "{prepare[image_size]} px, weights {model[weights]}",
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
    from tasks.workspace.config import read_params_file

    try:
        params = read_params_file(Path(params_file))
        ridge = stage == "train" and params["model"]["head"] == "ridge"
        name = f"{stage} ({(RIDGE_TRAIN_DETAILS if ridge else STAGE_RUN_DETAILS[stage]).format_map(params)})"
    except (KeyError, IndexError, TypeError, ConfigError):
        name = stage
    return f"{name}{PIPELINE_RUN_SEPARATOR}{pipeline_run}" if pipeline_run else name


def current_stage_run_name() -> str:
    """`flow_run_name` of every stage flow run on its own: `stage_run_name` of the flow run being started
    (the pipeline flow names the stage runs it calls itself, with its own run's name)."""
    from prefect.runtime import flow_run

    return stage_run_name(flow_run.flow_name, flow_run.parameters[STAGE_PARAMETER])


class StageFlow:
    """A stage: its function (`fn`) and its Prefect flow, made from it on first use (`flow`), so that a
    stage process that runs the function alone never imports Prefect (about a second per process under
    `dvc repro` without an API, issue 25). Called, or given options, it is the flow, as Prefect's
    `@flow` would be: the pipeline runs it as a subflow, the tests call it."""

    def __init__(self, name: str, function: Callable[[str], Any]) -> None:
        self.name = name
        self.fn = function
        functools.update_wrapper(self, function)

    @functools.cached_property
    def flow(self) -> Flow[[str], Any]:
        """The stage's Prefect flow: named after the stage, its run after what it runs, prints logged."""
        from prefect import flow

        return flow(name=self.name, flow_run_name=current_stage_run_name, log_prints=True)(self.fn)

    def __call__(self, params_file: str) -> Any:
        return self.flow(params_file)

    def with_options(self, **options: Any) -> Flow[[str], Any]:
        return self.flow.with_options(**options)


def pipeline_stage(name: str) -> Callable[[Callable[[str], Any]], StageFlow]:
    """Decorator: the function is stage `name` (`StageFlow`)."""
    return lambda function: StageFlow(name, function)


def prefect_api_configured() -> bool:
    """Whether a Prefect API is configured (PREFECT_API_URL, a profile): someone can watch the runs.
    Answered without importing Prefect when no settings source can set one (`prefect_api_certainly_unset`);
    once Prefect is imported it is asked (its settings may have been changed in this process)."""
    if "prefect" not in sys.modules and prefect_api_certainly_unset(os.environ, Path.cwd()):
        return False
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def call_stage(stage: StageFlow, params_file: str) -> object:
    """Run a stage on `params_file`: as a Prefect flow run when an API is configured (the runs show in
    its UI), else as the plain function (`StageFlow.fn`). Without an API, Prefect would start a temporary
    server for this one process (seconds per stage under `dvc repro`) that nobody can watch."""
    if prefect_api_configured():
        return stage(params_file)
    return stage.fn(params_file)


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


def run_reporting_errors(name: str, run: Callable[[], object]) -> None:
    """What every entry point does around its work `run` (a stage's, or the pipeline's): quiet library
    telemetry, stop when DVC dies (`tasks.runtime.lifeline`), and on a user error print one line and exit with
    code 1. A tracking server lost mid-run is one of those user errors
    (`tasks.tracking.server.tracking_server_loss_explained`)."""
    quiet_environment()
    die_with_parent()
    try:
        with tracking_server_loss_explained(name):
            run()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def run_stage(stage: StageFlow, params_file: str) -> None:
    """Run a stage flow on `params_file` (`call_stage`), reporting user errors in one line."""
    run_reporting_errors(stage.name, lambda: call_stage(stage, params_file))


def run_entry_point(stage: StageFlow) -> None:
    """Run a stage flow on `params.yaml` of the working directory (how `dvc repro` calls it); the
    process then exits without the collector's last passes (`tasks.runtime.exit`)."""
    with no_collection_at_exit():
        run_stage(stage, default_params_file())

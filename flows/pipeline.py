"""The whole pipeline as one Prefect flow: download -> prepare -> train -> evaluate -> calibrate -> register,
then `dvc push` of the outputs when the repository has a default DVC remote (a team's).

Each stage is a task that runs `dvc repro --single-item <stage>`, so DVC decides what is up to date
and records what ran: after this flow `dvc status` is clean, and after `dvc repro` this flow skips
every stage. Deployment parameters (`overrides`, e.g. {"train.epochs": 5}) are written into
params.yaml, as `dvc exp run --set-param` does, so every run stays reproducible from its files;
they are validated with the whole file first, and a refused override, or a failed run, leaves it
as it was. A run started from a deployment (a run request to the Prefect API) gets only what is
safe: the workspace's own params.yaml, overrides of the keys in `tasks.orchestration.RUN_REQUEST_KEYS`
only (how much work, which training variant), and none that chooses what is read or fetched unless
the worker's operator allows that source (`tasks.orchestration.SourcePolicy`), judged on the
parameters the run writes, inside the workspace lock.
Runs in one workspace never overlap: a file lock (and the deployment's concurrency limit of 1);
a run that has to wait says which run holds the lock and since when.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run, task_run

from flows._stage import (
    PARENT_TASK_RUN_VARIABLE,
    PIPELINE_RUN_VARIABLE,
    quiet_environment,
    run_entry_point,
    workspace_paths,
)
from tasks.config import check_params_file
from tasks.manifest import read_manifest
from tasks.orchestration import (
    PIPELINE_STAGES,
    SourcePolicy,
    StageOutcome,
    check_run_overrides,
    check_run_params_file,
    overrides_applied,
    push_outputs,
    read_json_if_present,
    report_markdown,
    run_dvc_stage,
    try_example,
    workspace_lock,
)
from tasks.paths import PARAMS_FILE_NAME, ProjectPaths
from tasks.signing import SIGNING_KEY_VARIABLE
from tasks.tracking import run_ui_link

REPORT_KEY = "signature-pipeline-report"
TIMINGS_KEY = "signature-pipeline-timings"
DOWNLOAD_RETRIES = 3
DOWNLOAD_RETRY_DELAYS_SECONDS = [10, 30, 90]
PUSH_RETRIES = 2
PUSH_RETRY_DELAYS_SECONDS: list[float] = [10, 60]
DEFAULT_LOCK_TIMEOUT_SECONDS = 600.0
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"
# A worker hands its flow run to the process it starts in this variable; the stages are not that run.
WORKER_FLOW_RUN_VARIABLE = "PREFECT__FLOW_RUN_ID"
SIGNING_STAGE = "register"  # the one stage given SIGPIPE_SIGNING_KEY (tasks/signing.py)


def stage_variables(stage: str, environment: dict[str, str]) -> dict[str, str]:
    """`environment` for `stage`: only register is told where the model signing key is, so the stages
    that read downloads and images (untrusted input) never see it."""
    if stage == SIGNING_STAGE:
        return dict(environment)
    return {name: value for name, value in environment.items() if name != SIGNING_KEY_VARIABLE}


@task(cache_policy=NO_CACHE)
def run_stage(stage: str, root: Path, environment: dict[str, str]) -> StageOutcome:
    """Run one DVC stage (skipped by DVC when up to date); a failure names the stage.

    The stage's flow run becomes a subflow run of this task run (`flows._stage.call_stage`), so
    the Prefect UI shows it nested under the pipeline run; its last messages are repeated here.
    """
    nested = {
        **stage_variables(stage, environment),
        PARENT_TASK_RUN_VARIABLE: str(task_run.id),
        PIPELINE_RUN_VARIABLE: str(flow_run.name),
    }
    outcome = run_dvc_stage(stage, root, nested)
    print(
        "\n".join(
            [f"{stage}: {'ran' if outcome.ran else 'up to date'} in {outcome.seconds:.1f} s"]
            + [f"  {message}" for message in outcome.messages]
        )
    )
    return outcome


@task(name="dvc-push", cache_policy=NO_CACHE, retries=PUSH_RETRIES, retry_delay_seconds=PUSH_RETRY_DELAYS_SECONDS)
def push_task(root: Path, environment: dict[str, str]) -> str | None:
    """Share what the stages produced: `dvc push` to the default remote when one is set (a team's,
    `make team-up`), so a second clone gets the same data and models with `dvc pull`."""
    pushed = push_outputs(root, environment)
    print(f"dvc push: {pushed}" if pushed else "dvc push: no default DVC remote, nothing shared")
    return pushed


def prefect_api_url() -> str | None:
    """The API this flow run reports to, so stage subprocesses use it instead of starting their own."""
    from prefect.settings import get_current_settings

    configured = get_current_settings().api.url
    if configured:
        return str(configured)
    from prefect.server.api.server import SubprocessASGIServer

    # With no API configured, Prefect runs this flow against its temporary local server.
    ephemeral = SubprocessASGIServer()
    return ephemeral.api_url if ephemeral.running else None


def stage_environment() -> dict[str, str]:
    """The environment of stage commands: this interpreter's bin folder first, this run's API."""
    quiet_environment()
    environment = dict(os.environ)
    environment.pop(WORKER_FLOW_RUN_VARIABLE, None)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    url = prefect_api_url()
    if url:
        environment["PREFECT_API_URL"] = url
    return environment


def training_run_link(paths: ProjectPaths, mlflow_ui_url: str) -> str | None:
    """A link to the training run in the MLflow UI, when training has logged one."""
    run = read_json_if_present(paths.train_run_file)
    if not run.get("run_id"):
        return None
    return run_ui_link(mlflow_ui_url, run["experiment_id"], run["run_id"])


def checked_run_request(params_file: str, overrides: dict[str, Any] | None) -> tuple[str, SourcePolicy | None]:
    """The parameter file a run uses, and the operator's policy its overrides must pass (None: a local
    run, not restricted). A run started from a deployment (a run request to the Prefect API) may name
    only its workspace's own params.yaml (the working directory the deployment's pull step set, which a
    request cannot change), may set only the keys of `RUN_REQUEST_KEYS`, and may not choose a data
    source the operator has not allowed; each is refused with one line before anything is written or
    run. This check, on params.yaml as it is now, refuses early; the overrides are judged again inside
    the workspace lock, on the document the run writes (`overrides_applied` with the policy), since
    another run may change params.yaml in between."""
    if not deployment.id:
        return params_file, None  # called from Python or `python -m flows.pipeline`: the caller's own choice
    own = check_run_params_file(params_file, Path.cwd())
    policy = SourcePolicy.from_environment(os.environ)
    check_run_overrides(overrides or {}, own, policy)
    return str(own), policy


@flow(name="signature-pipeline", log_prints=True)
def pipeline_flow(
    params_file: str = PARAMS_FILE_NAME,
    overrides: dict[str, Any] | None = None,
    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    mlflow_ui_url: str = DEFAULT_MLFLOW_UI,
) -> list[dict[str, object]]:
    """Bring every stage up to date, in order, then publish a report and a timing table."""
    checked_file, policy = checked_run_request(params_file, overrides)
    paths = workspace_paths(str(Path(checked_file).resolve()))
    lock = workspace_lock(paths.pipeline_lock_file, lock_timeout_seconds, label=f"flow run '{flow_run.name}'")
    # Every parameter is validated before any stage runs (DVC would remove outputs first); overrides
    # are validated with the whole file before it is written (a deployment run's against the operator's
    # policy too, on that file as it is inside the lock), and written back if the run fails.
    with lock, overrides_applied(paths.params_file, overrides or {}, policy) as applied:
        if applied:
            print("parameters set: " + ", ".join(applied))
        check_params_file(paths.params_file)
        environment = stage_environment()
        outcomes = []
        for stage in PIPELINE_STAGES:
            options: dict[str, Any] = {"name": stage, "task_run_name": stage}
            if stage == "download":
                options.update(retries=DOWNLOAD_RETRIES, retry_delay_seconds=DOWNLOAD_RETRY_DELAYS_SECONDS)
            outcomes.append(run_stage.with_options(**options)(stage, paths.root, environment))
        push_task(paths.root, environment)
    metrics = {
        "evaluate": read_json_if_present(paths.evaluate_details_file),
        "calibrate": read_json_if_present(paths.calibrate_details_file),
        "register": read_json_if_present(paths.register_details_file),
    }
    example = try_example(read_manifest(paths.manifest_file)) if paths.manifest_file.is_file() else None
    report = report_markdown(outcomes, metrics, training_run_link(paths, mlflow_ui_url), example)
    print(report)
    create_markdown_artifact(
        key=REPORT_KEY,
        markdown=report,
        description="Headline metrics, champion decision and MLflow link of this pipeline run",
    )
    rows = [{"stage": item.stage, "ran": item.ran, "seconds": round(item.seconds, 1)} for item in outcomes]
    create_table_artifact(key=TIMINGS_KEY, table=rows, description="Per-stage wall time; ran = False: up to date")
    return rows


def main() -> None:
    """Entry point of `python -m flows.pipeline` (what `make demo` runs)."""
    run_entry_point(pipeline_flow)


if __name__ == "__main__":
    main()

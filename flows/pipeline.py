"""The whole pipeline as one Prefect flow: download -> prepare -> embed -> train -> evaluate -> calibrate
-> package -> register, then `dvc push` of the outputs when the repository has a default DVC remote (a team's).

One process, one Prefect API: each stage whose inputs changed since DVC last recorded it (`dvc
status` of that stage) runs as a subflow of this run (a flow called inside a flow, so the UI nests
it under the pipeline run), then DVC records it (`dvc commit`, dvc.lock written once for the whole
run): after this flow `dvc status` is clean, and after `dvc repro` this flow skips every stage.
Libraries are imported once for the whole run instead of once per stage process. Deployment
parameters (`overrides`, e.g. {"train.epochs": 5}) are written into params.yaml, as `dvc exp run
--set-param` does, so every run stays reproducible from its files;
they are validated with the whole file first, and a refused override, or a failed run, leaves it
as it was. A run started from a deployment (a run request to the Prefect API) gets only what is
safe: the workspace's own params.yaml, overrides of the keys in `tasks.runtime.run_requests.RUN_REQUEST_KEYS`
only (how much work, which training variant), and none that chooses what is read or fetched unless
the worker's operator allows that source (`tasks.runtime.run_requests.SourcePolicy`), judged on the
parameters the run writes, inside the workspace lock.
Runs in one workspace never overlap: a file lock (and the deployment's concurrency limit of 1);
a run that has to wait says which run holds the lock and since when.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run

from flows._stage import (
    USER_ERRORS,
    default_params_file,
    quiet_environment,
    run_reporting_errors,
    stage_run_name,
    workspace_paths,
)
from tasks.data.manifest import read_manifest
from tasks.registration.signing import SIGNING_KEY_VARIABLE
from tasks.runtime.exit import no_collection_at_exit
from tasks.runtime.orchestration import (
    PIPELINE_STAGES,
    StageOutcome,
    dvc_repository,
    push_outputs,
    read_json_if_present,
    report_markdown,
    stage_is_stale,
    stage_records,
    stages_that_may_run,
    try_example,
    workspace_lock,
)
from tasks.runtime.run_requests import SourcePolicy, check_run_overrides, check_run_params_file, overrides_applied
from tasks.tracking.runs import run_ui_link
from tasks.workspace.config import check_params_file
from tasks.workspace.paths import PARAMS_FILE_NAME, ProjectPaths

REPORT_KEY = "signature-pipeline-report"
TIMINGS_KEY = "signature-pipeline-timings"
DOWNLOAD_RETRIES = 3
DOWNLOAD_RETRY_DELAY_SECONDS = 30  # a flow's retries wait a fixed delay (the download's own retries back off)
PUSH_RETRIES = 2
PUSH_RETRY_DELAYS_SECONDS: list[float] = [10, 60]
DEFAULT_LOCK_TIMEOUT_SECONDS = 600.0
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"
# What each stage imports when it runs (beyond DVC and Prefect, which the pipeline has): imported while
# the pipeline's own Prefect server starts, for the stages the run may execute (`import_stage_libraries`).
TENSORFLOW_MODULES = ("tasks.model.classifier",)  # TensorFlow and Keras
MLFLOW_MODULES = ("tasks.tracking.runs", "mlflow.store.tracking.sqlalchemy_store")  # MLflow and its SQL store
STAGE_LIBRARIES: dict[str, tuple[str, ...]] = {
    "embed": TENSORFLOW_MODULES,
    "train": ("tasks.model.verifier", *MLFLOW_MODULES),  # SciPy
    "evaluate": ("tasks.evaluation.evaluate", "sklearn.metrics", *MLFLOW_MODULES),
    "calibrate": ("tasks.evaluation.calibrate", *MLFLOW_MODULES),
    "package": TENSORFLOW_MODULES,
    "register": MLFLOW_MODULES,
}
TRACKING_STAGES = {"train", "evaluate", "calibrate", "register"}  # the stages that log to MLflow
CHECK_STAGE = "check_params"  # plain Python, not a flow: it only reads params.yaml
SIGNING_STAGE = "register"  # the one stage given SIGPIPE_SIGNING_KEY (tasks/registration/signing.py)


def stage_flow(stage: str) -> Any:
    """The flow (or, for check_params, the plain function) that runs `stage`."""
    from importlib import import_module

    module = import_module(f"flows.{stage}")
    return module.check_params if stage == CHECK_STAGE else getattr(module, f"{stage}_flow")


@contextmanager
def signing_key_for(stage: str, signing_key: str | None) -> Iterator[None]:
    """Tell only `register` where the model signing key is (SIGPIPE_SIGNING_KEY), for the duration of
    its run: the stages that read downloads and images (untrusted input) never see the variable."""
    if stage != SIGNING_STAGE or signing_key is None:
        yield
        return
    os.environ[SIGNING_KEY_VARIABLE] = signing_key
    try:
        yield
    finally:
        os.environ.pop(SIGNING_KEY_VARIABLE, None)


def bring_up_to_date(
    stage: str, paths: ProjectPaths, repository: Any, record: Callable[[str], None], signing_key: str | None
) -> StageOutcome:
    """Run `stage` if DVC finds its inputs changed, then `record` it (dvc.lock is written when the run's
    stages are done: `stage_records`); say what happened. A stage's error names the stage; it is then
    not recorded."""
    started = time.perf_counter()
    if not stage_is_stale(repository, stage):
        print(f"{stage}: up to date")
        return StageOutcome(stage, False, time.perf_counter() - started)
    try:
        with signing_key_for(stage, signing_key):
            run_stage_here(stage, paths)
    except USER_ERRORS as error:
        raise type(error)(f"stage '{stage}': {error}") from error
    record(stage)
    seconds = time.perf_counter() - started
    print(f"{stage}: ran in {seconds:.1f} s")
    return StageOutcome(stage, True, seconds)


def bring_all_up_to_date(paths: ProjectPaths, signing_key: str | None) -> list[StageOutcome]:
    """Every stage of `PIPELINE_STAGES`, in order, brought up to date (`bring_up_to_date`).

    DVC's repository lock is held from the first check to the last record, as `dvc repro` holds it: a
    `dvc repro` started meanwhile in this workspace fails at once instead of running a stage beside
    this run's. dvc.lock is written once, at the end, with every stage that ran (also when one fails)."""
    with dvc_repository(paths.root, "the pipeline") as repository, stage_records(repository) as record:
        return [bring_up_to_date(stage, paths, repository, record, signing_key) for stage in PIPELINE_STAGES]


def run_stage_here(stage: str, paths: ProjectPaths) -> None:
    """Run `stage` in this process: check_params as plain Python, every other stage as a subflow of
    this run, named after what it runs and this run (download retried as a whole, on top of its own
    retries with backoff)."""
    if stage == CHECK_STAGE:
        stage_flow(stage)(paths.params_file)  # a fraction of a second, no flow run
        return
    options: dict[str, Any] = {"flow_run_name": stage_run_name(stage, str(paths.params_file), flow_run.name)}
    if stage == "download":
        options.update(retries=DOWNLOAD_RETRIES, retry_delay_seconds=DOWNLOAD_RETRY_DELAY_SECONDS)
    stage_flow(stage).with_options(**options)(str(paths.params_file))


@task(name="dvc-push", cache_policy=NO_CACHE, retries=PUSH_RETRIES, retry_delay_seconds=PUSH_RETRY_DELAYS_SECONDS)
def push_task(root: Path, environment: dict[str, str]) -> str | None:
    """Share what the stages produced: `dvc push` to the default remote when one is set (a team's,
    `make team-up`), so a second clone gets the same data and models with `dvc pull`."""
    pushed = push_outputs(root, environment)
    print(f"dvc push: {pushed}" if pushed else "dvc push: no default DVC remote, nothing shared")
    return pushed


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
    # Every parameter is validated before any stage runs (a stage rewrites its outputs); overrides
    # are validated with the whole file before it is written (a deployment run's against the operator's
    # policy too, on that file as it is inside the lock), and written back if the run fails.
    with lock, overrides_applied(paths.params_file, overrides or {}, policy) as applied:
        if applied:
            print("parameters set: " + ", ".join(applied))
        check_params_file(paths.params_file)
        quiet_environment()
        signing_key = os.environ.pop(SIGNING_KEY_VARIABLE, None)  # register's alone (`signing_key_for`)
        try:
            outcomes = bring_all_up_to_date(paths, signing_key)
        finally:  # this process's environment as it was, for whatever runs in it next
            if signing_key is not None:
                os.environ[SIGNING_KEY_VARIABLE] = signing_key
        push_task(paths.root, dict(os.environ))
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


def import_stage_libraries(paths: ProjectPaths) -> None:
    """Import the libraries of the stages this run may execute (`STAGE_LIBRARIES` of those DVC finds out
    of date and those downstream of them), then open the workspace's MLflow store when one of them logs
    to it: seconds of CPU each would otherwise spend on its first run in this process, done while the
    temporary Prefect server starts on the other core (bench/README.md, issue 25). An up-to-date workspace
    imports nothing. A module that cannot be imported, or a store that cannot be opened, is left to the
    stage that needs it, which then fails with its own error."""
    from importlib import import_module

    quiet_environment()  # before TensorFlow loads: its notices stay off the terminal
    stages = stages_that_may_run(paths.root, {CHECK_STAGE})
    modules = dict.fromkeys(
        name for stage in PIPELINE_STAGES if stage in stages for name in STAGE_LIBRARIES.get(stage, ())
    )
    for name in modules:
        with suppress(ImportError):
            import_module(name)
    if stages & TRACKING_STAGES:
        from tasks.tracking.runs import open_local_store

        with suppress(Exception):  # the stage opens it again and reports what is wrong
            open_local_store(paths)


def run_with_an_api(params_file: str) -> None:
    """The pipeline flow on `params_file`, against the configured Prefect API or, when there is none,
    its own guarded temporary server (`tasks.runtime.prefect_api`): a `kill -9` of this process does not leave
    it listening. The stages' libraries are imported while that server starts."""
    from tasks.runtime.prefect_api import prefect_api_for_this_run

    paths = workspace_paths(str(Path(params_file).resolve()))
    with prefect_api_for_this_run(meanwhile=lambda: import_stage_libraries(paths)):
        pipeline_flow(params_file)


def main() -> None:
    """Entry point of `python -m flows.pipeline` (what `make demo` runs)."""
    params_file = default_params_file()
    with no_collection_at_exit():
        run_reporting_errors(pipeline_flow.name, lambda: run_with_an_api(params_file))


if __name__ == "__main__":
    main()

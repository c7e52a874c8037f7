"""The Prefect pipeline flow on generated data: each stage once, then nothing; artifacts; shared
state with DVC; an invalid override refused; and the same flow run from a deployment by a worker."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import pytest
import yaml

from tasks.config import ConfigError
from tasks.orchestration import PIPELINE_STAGES
from tests.conftest import edit_params

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

TINY_PIPELINE = {
    "synthetic": {
        "writers": 3,
        "genuine_per_writer": 9,
        "skilled_per_writer": 2,
        "simple_per_writer": 1,
        "opposite_per_writer": 2,
        "width": 120,
        "height": 80,
    },
    "prepare": {"image_size": 75, "workers": 1},
    "model": {"dense_units": 32},
    "train": {"epochs": 3, "augmented_views": 1},
    "evaluate": {"batch_size": 16, "top_k": 2},
    "calibrate": {"target_far": 0.2},  # 9 calibration unknowns can resolve a FAR of 0.2, not 0.05
    "tracking": {"log_model": False},
    "register": {"model_name": "pipeline-test"},
}
WORKER_TIMEOUT_SECONDS = 600


def nested_stage_runs(pipeline_run_id: UUID) -> dict[str, FlowRun]:
    """Flow name -> flow run, for every flow run whose parent is a task run of the pipeline run,
    checking that each one's parent task run is named after its stage."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[pipeline_run_id])))
        task_names = {task_run.id: task_run.name for task_run in task_runs}
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=list(task_names)))
        )
        nested = {client.read_flow(child.flow_id).name: child for child in children}
    assert len(nested) == len(children), [child.name for child in children]  # one flow run per stage
    for stage, child in nested.items():
        assert task_names[child.parent_task_run_id] == stage
    return nested


def pipeline_log(pipeline_run_id: UUID) -> list[str]:
    """The messages of the pipeline run's log (its tasks' included), once every queued log is sent."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[pipeline_run_id])))
    return [log.message for log in logs]


def artifact_keys() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {artifact.key for artifact in client.read_artifacts() if artifact.key}


@pytest.mark.slow
def test_pipeline_flow_shares_state_with_dvc(workspace: Path, subprocess_env: dict[str, str]) -> None:
    from flows.pipeline import REPORT_KEY, TIMINGS_KEY, pipeline_flow

    edit_params(workspace / "params.yaml", TINY_PIPELINE)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=workspace, env=subprocess_env, check=True)
    remote = workspace.parent / "team-remote"  # a team's shared DVC remote (make team-up adds one)
    subprocess.run(["dvc", "remote", "add", "-d", "team", str(remote)], cwd=workspace, env=subprocess_env, check=True)
    params_file = str(workspace / "params.yaml")

    first_state = pipeline_flow(params_file, overrides={"train.epochs": 2}, return_state=True)
    first = first_state.result()
    assert [row["stage"] for row in first] == list(PIPELINE_STAGES)
    assert all(row["ran"] for row in first)
    # The outputs went to the remote: what a second clone's `dvc pull` gets (the classifier among them).
    classifier_digest = hashlib.md5((workspace / "models" / "classifier.keras").read_bytes()).hexdigest()
    assert any(path.name == classifier_digest[2:] for path in remote.rglob("*") if path.is_file())
    assert yaml.safe_load((workspace / "params.yaml").read_text())["train"]["epochs"] == 2  # recorded in the file
    status = subprocess.run(["dvc", "status"], cwd=workspace, env=subprocess_env, capture_output=True, text=True)
    assert "up to date" in status.stdout
    assert {REPORT_KEY, TIMINGS_KEY} <= artifact_keys()

    # The Prefect UI shows one story: every stage's flow run nested under the pipeline run, named after
    # what ran and the pipeline run, and the stages' own messages in the pipeline run's log.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pipeline_run = client.read_flow_run(first_state.state_details.flow_run_id)
    stage_runs = nested_stage_runs(pipeline_run.id)
    assert sorted(stage_runs) == sorted(set(PIPELINE_STAGES) - {"check_params"})  # check_params is plain Python
    for stage, stage_run in stage_runs.items():
        assert stage_run.name.startswith(f"{stage} (") and stage_run.name.endswith(f" · {pipeline_run.name}")
        assert stage_run.state is not None and stage_run.state.is_completed(), (stage, stage_run.state)
    assert stage_runs["train"].name.startswith("train (ridge head, closed form, 75 px)")  # the default head
    log = pipeline_log(pipeline_run.id)
    stage_lines = {message.split(":", 1)[0]: message.splitlines() for message in log if ": ran in " in message}
    assert len(stage_lines["train"]) > 1, log  # the training's own messages follow "train: ran in ... s"
    assert any("registered pipeline-test version 1" in line for line in stage_lines["register"]), log

    second_state = pipeline_flow(params_file, return_state=True)
    second = second_state.result()
    assert not any(row["ran"] for row in second)
    assert nested_stage_runs(second_state.state_details.flow_run_id) == {}  # skipped stages leave no flow run

    # An invalid override is refused before any stage runs, and params.yaml keeps its bytes.
    params_before = (workspace / "params.yaml").read_bytes()
    with pytest.raises(ConfigError, match=r"evaluate\.top_k"):
        pipeline_flow(params_file, overrides={"evaluate.top_k": 0})
    assert (workspace / "params.yaml").read_bytes() == params_before

    # The deployment, run by a real worker process against the same API: every stage up to date.
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        from prefect.client.schemas.actions import WorkPoolCreate

        client.create_work_pool(WorkPoolCreate(name="test-pool", type="process"), overwrite=True)
    deployment_id = pipeline_flow.from_source(
        source=str(workspace), entrypoint="flows/pipeline.py:pipeline_flow"
    ).deploy(
        name="test",
        work_pool_name="test-pool",
        parameters={"params_file": params_file},
        concurrency_limit=1,
        print_next_steps=False,
    )
    assert deployment_id
    flow_run = run_deployment("signature-pipeline/test", timeout=0)
    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "test-pool", "--run-once"],
        cwd=workspace,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_SECONDS,
    )
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(flow_run.id)
    assert finished.state is not None and finished.state.is_completed(), finished.state

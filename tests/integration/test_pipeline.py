"""The Prefect pipeline flow on generated data: each stage once, then nothing; artifacts; shared
state with DVC; an invalid override refused; the same flow run from a deployment by a worker; and
`dvc repro` on the workspace the flow left: incremental, and reproducible to the byte.

Both tests start from one run of the pipeline flow (the module's `pipeline_run`, on one xdist worker):
every stage run as a process through `dvc repro`, the most expensive thing these tests do."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import pytest
import yaml

from tasks.runtime.orchestration import PIPELINE_STAGES
from tasks.workspace.errors import ConfigError
from tests.conftest import edit_params, make_workspace, subprocess_environment

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import State

# The pipeline run both tests start from is built once, on one worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]

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
    # A trained head (the default ridge head is solved in closed form): its byte-identical rerun is the
    # stronger reproducibility check, and train.mode reaches it.
    "model": {"head": "mlp", "dense_units": 32},
    "train": {"epochs": 3, "augmented_views": 1},
    "evaluate": {"top_k": 2},
    "calibrate": {"target_far": 0.2},  # 9 calibration unknowns can resolve a FAR of 0.2, not 0.05
    "register": {"model_name": "pipeline-test"},
}
FIRST_RUN_OVERRIDES = {"train.epochs": 2}
WORKER_TIMEOUT_SECONDS = 600
STAGE_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class PipelineRun:
    """A workspace (a DVC repository with a default remote) after one run of the pipeline flow."""

    workspace: Path
    remote: Path
    state: State


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command in the workspace, failing the test with its output when it fails."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=STAGE_TIMEOUT_SECONDS)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> PipelineRun:
    """The pipeline flow run once (with an override) on a tiny generated workspace whose DVC repository
    has a team's default remote (make team-up adds one)."""
    workspace = make_workspace(tmp_path_factory.mktemp("pipeline-run") / "workspace")
    environment = subprocess_environment(prefect_api_url)
    edit_params(workspace / "params.yaml", TINY_PIPELINE)
    run(["dvc", "init", "--no-scm", "-q"], workspace, environment)
    remote = workspace.parent / "team-remote"
    run(["dvc", "remote", "add", "-d", "team", str(remote)], workspace, environment)
    from flows.pipeline import pipeline_flow

    state = pipeline_flow(str(workspace / "params.yaml"), overrides=FIRST_RUN_OVERRIDES, return_state=True)
    return PipelineRun(workspace, remote, state)


def changed_stages(workspace: Path, env: dict[str, str]) -> set[str]:
    """The stages whose own dependencies or parameters changed, as `dvc status` sees them."""
    return set(json.loads(run(["dvc", "status", "--json"], workspace, env).stdout))


def nested_stage_runs(pipeline_run_id: UUID) -> dict[str, FlowRun]:
    """Flow name -> flow run, for every flow run nested under the pipeline run (Prefect links a subflow
    run to its parent flow run through a task run of the parent)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[pipeline_run_id])))
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[task_run.id for task_run in task_runs])
            )
        )
        nested = {client.read_flow(child.flow_id).name: child for child in children}
    assert len(nested) == len(children), [child.name for child in children]  # one flow run per stage
    return nested


def flow_run_log(flow_run_id: UUID) -> list[str]:
    """The messages of a flow run's log, once every queued log is sent."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def artifact_keys() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {artifact.key for artifact in client.read_artifacts() if artifact.key}


def test_pipeline_flow_shares_state_with_dvc(pipeline_run: PipelineRun, subprocess_env: dict[str, str]) -> None:
    from flows.pipeline import REPORT_KEY, TIMINGS_KEY, pipeline_flow

    workspace, remote, first_state = pipeline_run.workspace, pipeline_run.remote, pipeline_run.state
    params_file = str(workspace / "params.yaml")
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

    # The Prefect UI shows one story: every stage's flow run nested under the pipeline run (one process,
    # one API), named after what ran and the pipeline run, each with its own messages in its log.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pipeline_run = client.read_flow_run(first_state.state_details.flow_run_id)
    stage_runs = nested_stage_runs(pipeline_run.id)
    assert sorted(stage_runs) == sorted(set(PIPELINE_STAGES) - {"check_params"})  # check_params is plain Python
    for stage, stage_run in stage_runs.items():
        assert stage_run.name.startswith(f"{stage} (") and stage_run.name.endswith(f" · {pipeline_run.name}")
        assert stage_run.state is not None and stage_run.state.is_completed(), (stage, stage_run.state)
    assert stage_runs["train"].name.startswith("train (mlp head, cached, 75 px, up to 2 epochs)")
    log = flow_run_log(pipeline_run.id)
    assert {message.split(":", 1)[0] for message in log if ": ran in " in message} == set(PIPELINE_STAGES), log
    assert any("best epoch" in message for message in flow_run_log(stage_runs["train"].id))
    register_log = flow_run_log(stage_runs["register"].id)
    assert any("registered pipeline-test version 1" in message for message in register_log), register_log

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


def test_dvc_repro_is_incremental(pipeline_run: PipelineRun, tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """On a copy of the workspace the pipeline flow left (every stage run through `dvc repro`): nothing
    to rerun, a rerun from train from nothing is byte-identical, a parameter reruns only the stages
    that read it, and prepare rebuilt from scratch gives the same manifest."""
    workspace = tmp_path / "workspace"
    shutil.copytree(pipeline_run.workspace, workspace, symlinks=True)
    manifest = workspace / "data" / "prepared" / "manifest.csv"
    manifest_bytes = manifest.read_bytes()

    second = run(["dvc", "repro"], workspace, subprocess_env)
    assert "Running stage" not in second.stdout
    assert manifest.read_bytes() == manifest_bytes

    # Embed and what follows it again from nothing (no MLflow store, no embeddings): every output
    # DVC records is the same to the byte, so dvc.lock is too, and a fresh clone's run leaves a committed
    # lock unchanged. (Download and prepare are rebuilt to the byte at the end of this test.)
    lock = (workspace / "dvc.lock").read_text()
    shutil.rmtree(workspace / "mlruns")
    shutil.rmtree(workspace / "data" / "embeddings")
    forced = run(["dvc", "repro", "--force", "--downstream", "embed"], workspace, subprocess_env)
    for stage in ("embed", "train", "evaluate", "calibrate", "package", "register"):
        assert f"Running stage '{stage}'" in forced.stdout
    assert "Running stage 'prepare'" not in forced.stdout
    assert (workspace / "dvc.lock").read_text() == lock

    edit_params(workspace / "params.yaml", {"calibrate": {"target_far": 0.25}})
    only_calibrate = run(["dvc", "repro"], workspace, subprocess_env)
    assert "Running stage 'calibrate'" in only_calibrate.stdout
    for stage in ("download", "prepare", "embed", "train", "evaluate", "package"):
        assert f"Running stage '{stage}'" not in only_calibrate.stdout  # the classifier is not rebuilt
    assert "Running stage 'register'" in only_calibrate.stdout  # downstream of a stage whose outputs changed
    assert json.loads((workspace / "metrics" / "calibrate_details.json").read_text())["target_far"] == 0.25

    # Which stages a parameter reaches is dvc.yaml's declaration, which `dvc status` reads without running
    # anything; the stages downstream of a changed one rerun because its outputs change (the calibrate
    # change above ran register too), and identical inputs give identical outputs (the forced rerun).
    params = (workspace / "params.yaml").read_text()
    edit_params(workspace / "params.yaml", {"train": {"mode": "online"}})
    reached = changed_stages(workspace, subprocess_env)
    assert "train" in reached and not reached & {"download", "prepare", "embed", "evaluate", "calibrate"}
    (workspace / "params.yaml").write_text(params)
    edit_params(workspace / "params.yaml", {"prepare": {"image_size": 80}})
    reached = changed_stages(workspace, subprocess_env)
    assert "prepare" in reached and not reached & {"download", "train", "calibrate"}
    (workspace / "params.yaml").write_text(params)
    status = run(["dvc", "status"], workspace, subprocess_env)
    assert "up to date" in status.stdout
    # Rebuilding from scratch gives the same manifest: the stage is reproducible to the byte.
    run(["dvc", "repro", "--force", "--single-item", "prepare"], workspace, subprocess_env)
    assert manifest.read_bytes() == manifest_bytes

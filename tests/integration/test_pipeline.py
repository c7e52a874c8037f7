"""The Prefect pipeline flow on generated data: each stage once, then nothing; artifacts; shared
state with DVC; an invalid override refused; and the same flow run from a deployment by a worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError
from tasks.orchestration import PIPELINE_STAGES
from tests.conftest import edit_params

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


def artifact_keys() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {artifact.key for artifact in client.read_artifacts() if artifact.key}


@pytest.mark.slow
def test_pipeline_flow_shares_state_with_dvc(workspace: Path, subprocess_env: dict[str, str]) -> None:
    from flows.pipeline import REPORT_KEY, TIMINGS_KEY, pipeline_flow

    edit_params(workspace / "params.yaml", TINY_PIPELINE)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=workspace, env=subprocess_env, check=True)
    params_file = str(workspace / "params.yaml")

    first = pipeline_flow(params_file, overrides={"train.epochs": 2})
    assert [row["stage"] for row in first] == list(PIPELINE_STAGES)
    assert all(row["ran"] for row in first)
    assert yaml.safe_load((workspace / "params.yaml").read_text())["train"]["epochs"] == 2  # recorded in the file
    status = subprocess.run(["dvc", "status"], cwd=workspace, env=subprocess_env, capture_output=True, text=True)
    assert "up to date" in status.stdout
    assert {REPORT_KEY, TIMINGS_KEY} <= artifact_keys()

    second = pipeline_flow(params_file)
    assert not any(row["ran"] for row in second)

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

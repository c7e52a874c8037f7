"""The MLflow tracking server lost in the middle of training: a real `mlflow server` (SQLite store,
served artifacts) killed while a real train stage process logs its epochs to it.

A server that comes back within MLflow's retries goes unnoticed (training finishes, no epoch's
metrics lost); one that stays away stops the stage with one clear line, and the rerun, once the
server is back, ends the cut run KILLED and resumes it from its checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.download import download_flow
from flows.embed import embed_flow
from flows.prepare import prepare_flow
from tests.conftest import edit_params
from tests.integration.test_stages import TINY_DATASET
from tests.support.tracking_server import TrackingServer

pytestmark = pytest.mark.slow

STAGE_TIMEOUT_SECONDS = 600
POLL_SECONDS = 0.2
EXPERIMENT = "server-faults"
# Enough epochs (early stopping out of reach) that training is still running when the server is killed.
EPOCHS = 150
TRAINING = {
    **TINY_DATASET,
    "model": {"head": "linear"},
    "train": {"epochs": EPOCHS, "patience": EPOCHS, "augmented_views": 1},
    "tracking": {"experiment": EXPERIMENT},
}
# The failing leg: MLflow's client gives up after one quick retry instead of about 4 minutes of them.
IMPATIENT_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


@pytest.fixture
def server(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[TrackingServer]:
    folder = tmp_path / "server"
    folder.mkdir()
    tracking_server = TrackingServer(folder, subprocess_env)
    tracking_server.start()
    yield tracking_server
    tracking_server.kill()


def start_training(workspace: Path, environment: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.train"],
        cwd=workspace,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_server_after_new_epochs(server: TrackingServer, training: subprocess.Popen[str], epochs: int) -> str:
    """Wait until the training logs `epochs` more losses to the server than its run held when first
    seen (a resumed run starts with the epochs it logged before), then kill the server; returns the
    run's id. The training must still be running then, or the test proves nothing."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    logged_before: int | None = None
    deadline = time.monotonic() + STAGE_TIMEOUT_SECONDS
    while time.monotonic() < deadline and training.poll() is None:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs:
            logged = len(client.get_metric_history(runs[0].info.run_id, "loss"))
            logged_before = logged if logged_before is None else logged_before
            # More than asked: a resumed run first logs the epoch its cut predecessor could not.
            if logged > logged_before + epochs:
                server.kill()
                assert training.poll() is None, "training ended before the server was killed: raise EPOCHS"
                return runs[0].info.run_id
        time.sleep(POLL_SECONDS)
    pytest.fail(f"the training did not log {epochs} epochs: {training.communicate()[1][-3000:]}")


def test_the_tracking_server_lost_mid_training(
    workspace: Path, server: TrackingServer, subprocess_env: dict[str, str]
) -> None:
    from mlflow.tracking import MlflowClient

    params_file = workspace / "params.yaml"
    edit_params(params_file, TRAINING)
    download_flow(str(params_file))
    prepare_flow(str(params_file))
    embed_flow(str(params_file))
    environment = {**subprocess_env, "MLFLOW_TRACKING_URI": server.url}

    # 1. The server dies and stays away: the stage stops with one line saying what to do.
    training = start_training(workspace, {**environment, **IMPATIENT_CLIENT})
    cut_run = kill_server_after_new_epochs(server, training, epochs=2)
    stdout, stderr = training.communicate(timeout=STAGE_TIMEOUT_SECONDS)
    assert training.returncode == 1, stdout + stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert f"the MLflow tracking server {server.url} stopped answering during the train stage" in errors[0]
    assert "make team-up" in errors[0] and "dvc repro" in errors[0]
    # Prefect logs the task's traceback to the flow run's log; the stage's own last word is the one line.
    assert "Traceback" not in stderr.split(errors[0])[1], stderr
    assert not (workspace / "models" / "train_run.json").exists()  # DVC would record nothing

    # 2. The server is back; the rerun ends the cut run KILLED, reopens it from its checkpoint, and the
    # server dies again under it but is restarted within MLflow's retries: training just finishes.
    server.start()
    client = MlflowClient(tracking_uri=server.url)
    assert client.get_run(cut_run).info.status == "RUNNING"  # nobody could end it
    training = start_training(workspace, environment)
    resumed_run = kill_server_after_new_epochs(server, training, epochs=2)
    time.sleep(2)
    server.start()
    stdout, stderr = training.communicate(timeout=STAGE_TIMEOUT_SECONDS)
    assert training.returncode == 0, stdout + stderr
    output = stdout + stderr  # printed lines reach the flow run's log (stderr) through Prefect
    assert "resuming from epoch" in output and f"of MLflow run {cut_run}" in output, output
    assert f"MLflow run {cut_run} was left RUNNING by process" in output
    assert resumed_run == cut_run
    run = client.get_run(cut_run)
    assert run.info.status == "FINISHED"
    epochs_run = json.loads((workspace / "metrics" / "train.json").read_text())["epochs_run"]
    steps = [metric.step for metric in client.get_metric_history(cut_run, "loss")]
    assert sorted(set(steps)) == list(range(epochs_run)), steps  # every epoch's loss, none lost to the outages
    assert json.loads((workspace / "models" / "train_run.json").read_text())["run_id"] == cut_run
    artifacts = {artifact.path for artifact in client.list_artifacts(cut_run)}
    assert {"train.json", "labels.json", "plots"} <= artifacts  # uploaded through the restarted server

"""`python -m flows.team up/down` (`make team-up`/`team-down`): a real PostgreSQL cluster behind the
Prefect server and the MLflow tracking server, MLflow's artifacts served from the shared folder,
and the shared DVC remote; everything written survives a restart of all of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from flows.team import TeamSettings, start_postgres, stop_postgres
from tests.integration.test_pipeline_flows import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("team")]

TEAM_TIMEOUT_SECONDS = 600
EXPERIMENT = "team-services-test"
MODEL = "team-services-model"
FLOW = "team-services-flow"


def team(command: str, workspace: Path, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.team", command],
        cwd=workspace,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TEAM_TIMEOUT_SECONDS,
    )


@pytest.fixture
def team_dir(tmp_path: Path) -> Iterator[Path]:
    """The team folder, where PostgreSQL (run as the postgres user when tests run as root) can reach it:
    pytest's own temporary folders are private to the test's user."""
    folder = Path(tempfile.mkdtemp(prefix="sigpipe-team-"))
    folder.chmod(0o755)
    yield folder / "team"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def team_environment(tmp_path: Path, team_dir: Path) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("PREFECT_", "MLFLOW_"))}
    environment.update(
        SIGPIPE_TEAM_DIR=str(team_dir),
        SIGPIPE_TEAM_SHARED=str(tmp_path / "shared"),
        SIGPIPE_POSTGRES_PORT=str(free_port()),
        PREFECT_PORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
        DVC_NO_ANALYTICS="1",
    )
    return environment


def test_team_services_keep_runs_models_flows_and_data_across_a_restart(
    tmp_path: Path, team_dir: Path, team_environment: dict[str, str]
) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=workspace, env=team_environment, check=True)
    mlflow_url = f"http://127.0.0.1:{team_environment['MLFLOW_PORT']}"
    prefect_url = f"http://127.0.0.1:{team_environment['PREFECT_PORT']}/api"
    try:
        up = team("up", workspace, team_environment)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"export PREFECT_API_URL={prefect_url} MLFLOW_TRACKING_URI={mlflow_url}" in up.stdout
        password_file = team_dir / "postgres.password"
        assert password_file.stat().st_mode & 0o077 == 0  # readable by its owner only

        # MLflow: a run, a metric, an artifact uploaded through the server, a registered model.
        client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
        run = client.create_run(client.create_experiment(EXPERIMENT))
        client.log_metric(run.info.run_id, "accuracy", 0.875)
        client.log_text(run.info.run_id, "kept", "notes/kept.txt")
        client.create_registered_model(MODEL)
        stored = list((tmp_path / "shared" / "mlflow-artifacts").rglob("kept.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "kept"  # in the shared folder, sent by the server
        # Prefect: a flow record in its PostgreSQL database.
        with temporary_settings({PREFECT_API_URL: prefect_url}), get_client(sync_client=True) as prefect:
            flow_id = prefect.create_flow_from_name(FLOW)
        # DVC: data pushed to the shared remote.
        (workspace / "data.txt").write_text("versioned\n")
        for command in (["dvc", "add", "-q", "data.txt"], ["dvc", "push", "-q"]):
            subprocess.run(command, cwd=workspace, env=team_environment, check=True, capture_output=True)
        assert "remote = team" in (workspace / ".dvc" / "config").read_text()
        assert any(path.is_file() for path in (tmp_path / "shared" / "dvc-remote").rglob("*"))

        # PostgreSQL restarted under the running servers: they reconnect, and nothing written is lost.
        settings = TeamSettings.from_environment(workspace, team_environment)
        assert stop_postgres(settings)
        start_postgres(settings)
        client.log_metric(run.info.run_id, "accuracy", 0.9, step=1)
        assert [metric.value for metric in client.get_metric_history(run.info.run_id, "accuracy")] == [0.875, 0.9]
        with temporary_settings({PREFECT_API_URL: prefect_url}), get_client(sync_client=True) as prefect:
            assert prefect.read_flow_by_name(FLOW).id == flow_id

        down = team("down", workspace, team_environment)
        assert down.returncode == 0 and "postgres" in down.stdout, down.stdout + down.stderr
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{mlflow_url}/health", timeout=5)

        again = team("up", workspace, team_environment)
        assert again.returncode == 0, again.stdout + again.stderr
        client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
        assert client.get_run(run.info.run_id).data.metrics == {"accuracy": 0.9}  # the latest step
        assert client.get_registered_model(MODEL).name == MODEL
        downloaded = client.download_artifacts(run.info.run_id, "notes/kept.txt", str(tmp_path / "download"))
        assert Path(downloaded).read_text() == "kept"
        with temporary_settings({PREFECT_API_URL: prefect_url}), get_client(sync_client=True) as prefect:
            assert prefect.read_flow_by_name(FLOW).id == flow_id
        (workspace / "data.txt").unlink()
        subprocess.run(["dvc", "pull", "-q"], cwd=workspace, env=team_environment, check=True, capture_output=True)
        assert (workspace / "data.txt").read_text() == "versioned\n"
    finally:
        final = team("down", workspace, team_environment)
    assert final.returncode == 0
    assert "nothing was running" in team("down", workspace, team_environment).stdout


# The README's team sequence, in a clone of the project's pipeline files: a deployment run by a
# process worker against the team's servers, then a second clone that pulls and predicts.
TEAM_SEQUENCE = """set -euo pipefail
python -m flows.team up
export PREFECT_API_URL MLFLOW_TRACKING_URI
prefect work-pool create signature-pool --type process --overwrite > /dev/null
SIGPIPE_ROOT=$PWD prefect --no-prompt deploy --all > deploy.log
prefect worker start --pool signature-pool > worker.log 2>&1 &
worker=$!
# The worker is gone before the servers stop: TERM (Prefect shuts down gracefully), then KILL after 15 s.
stop_worker() {
  kill $worker 2>/dev/null || return 0
  for _ in $(seq 15); do kill -0 $worker 2>/dev/null || return 0; sleep 1; done
  kill -9 $worker 2>/dev/null || true
}
trap stop_worker EXIT
prefect deployment run 'signature-pipeline/local' --watch --watch-timeout 900
git add dvc.lock params.yaml .dvc/config && git commit -q -m "pipeline run on the team servers"
git clone -q . ../second-clone && cd ../second-clone
dvc pull -q
dvc metrics show --json > ../second-metrics.json
sigpipe predict data/raw/UTSig/Genuine/1/1.tif --json > ../second-predict.json
"""
SEQUENCE_TIMEOUT_SECONDS = 1500
TINY_TEAM_PIPELINE = {
    "synthetic": {"writers": 3, "genuine_per_writer": 9, "skilled_per_writer": 2, "width": 120, "height": 80},
    "prepare": {"image_size": 75, "workers": 1},
    "train": {"epochs": 2, "augmented_views": 1},
    "evaluate": {"batch_size": 16, "top_k": 2},
    "calibrate": {"target_far": 0.2},
}


def test_a_second_clone_pulls_the_data_and_predicts_with_the_servers_champion(
    tmp_path: Path, team_dir: Path, team_environment: dict[str, str]
) -> None:
    import json

    from mlflow.tracking import MlflowClient

    from tests.conftest import PROJECT_ROOT, edit_params, make_workspace

    first = make_workspace(tmp_path / "first-clone")
    for name in ("prefect.yaml", ".gitignore", ".dvcignore"):
        shutil.copy2(PROJECT_ROOT / name, first / name)
    edit_params(first / "params.yaml", TINY_TEAM_PIPELINE)
    git = ["git", "-c", "user.name=team-test", "-c", "user.email=team-test@localhost"]
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        [*git, "commit", "-q", "-m", "clone"],
    ):
        subprocess.run(command, cwd=first, env=team_environment, check=True, capture_output=True)
    environment = {
        **team_environment,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{team_environment['PREFECT_PORT']}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{team_environment['MLFLOW_PORT']}",
        "GIT_AUTHOR_NAME": "team-test",
        "GIT_AUTHOR_EMAIL": "team-test@localhost",
        "GIT_COMMITTER_NAME": "team-test",
        "GIT_COMMITTER_EMAIL": "team-test@localhost",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{team_environment.get('PATH', '')}",
    }
    try:
        sequence = subprocess.run(
            ["bash", "-c", TEAM_SEQUENCE],
            cwd=first,
            env=environment,
            capture_output=True,
            text=True,
            timeout=SEQUENCE_TIMEOUT_SECONDS,
        )
        logs = "".join(path.read_text() for path in (first / "worker.log", first / "deploy.log") if path.exists())
        assert sequence.returncode == 0, sequence.stdout[-4000:] + sequence.stderr[-4000:] + logs[-4000:]
        # The model was registered on the server, and its files went through it to the shared folder.
        client = MlflowClient(tracking_uri=environment["MLFLOW_TRACKING_URI"])
        champion = client.get_model_version_by_alias("utsig-inceptionv3", "champion")
        assert any((tmp_path / "shared" / "mlflow-artifacts").rglob("classifier.keras"))
        # The second clone has the first one's numbers and answers with the server's champion,
        # without training: it has no MLflow store of its own.
        second = tmp_path / "second-clone"
        pulled = json.loads((tmp_path / "second-metrics.json").read_text())
        shown = subprocess.run(
            ["dvc", "metrics", "show", "--json"], cwd=first, env=environment, capture_output=True, text=True, check=True
        )
        assert pulled == json.loads(shown.stdout.replace(str(first), str(second)))
        # Data, models, metrics and plots came with `dvc pull` (stage reports that carry MLflow runs stay
        # where they ran: dvc.yaml keeps those stages out of DVC's run cache).
        for pulled_file in ("models/classifier.keras", "data/prepared/manifest.csv", "plots/roc_det.png"):
            assert (second / pulled_file).is_file(), pulled_file
        assert not (second / "mlruns" / "mlflow.db").exists()
        answer = json.loads((tmp_path / "second-predict.json").read_text().splitlines()[0])
        assert answer["error"] == "" and answer["writer"] in {"001", "002", "003", "unknown"}
        assert champion.version == "1"
    finally:
        team("down", first, team_environment)

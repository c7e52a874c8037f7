"""`python -m tasks.services.team up/down` (`make team-up`/`team-down`): a real PostgreSQL cluster behind the
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

from tasks.services.team_postgres import start_postgres, stop_postgres
from tasks.services.team_settings import TeamSettings
from tests.conftest import PROJECT_ROOT, edit_params
from tests.support.model_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("team")]

TEAM_TIMEOUT_SECONDS = 600
EXPERIMENT = "team-services-test"
MODEL = "team-services-model"
FLOW = "team-services-flow"


def team(command: str, workspace: Path, environment: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasks.services.team", command, *options],
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


def team_exports(workspace: Path, environment: dict[str, str]) -> dict[str, str]:
    """What `eval "$(python -m tasks.services.team env --operator)"` sets: the servers' URLs and the team's
    credentials, Prefect's included (these tests run deployments, as an operator)."""
    import shlex

    printed = team("env", workspace, environment, "--operator")
    assert printed.returncode == 0, printed.stderr
    return dict(shlex.split(line)[1].split("=", 1) for line in printed.stdout.splitlines())


def test_team_services_keep_runs_models_flows_and_data_across_a_restart(
    tmp_path: Path, team_dir: Path, team_environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=workspace, env=team_environment, check=True)
    mlflow_url = f"http://127.0.0.1:{team_environment['MLFLOW_PORT']}"
    prefect_url = f"http://127.0.0.1:{team_environment['PREFECT_PORT']}/api"
    try:
        up = team("up", workspace, team_environment)
        assert up.returncode == 0, up.stdout + up.stderr
        assert 'eval "$(python -m tasks.services.team env)"' in up.stdout
        password_file = team_dir / "postgres.password"
        assert password_file.stat().st_mode & 0o077 == 0  # readable by its owner only
        # The clients below authenticate as a member's shell does after `eval "$(python -m tasks.services.team env)"`.
        exports = team_exports(workspace, team_environment)
        assert exports["PREFECT_API_URL"] == prefect_url and exports["MLFLOW_TRACKING_URI"] == mlflow_url
        for name, value in exports.items():
            monkeypatch.setenv(name, value)
        credentials = (team_dir / "credentials.json").read_text()
        prefect_settings = {PREFECT_API_URL: prefect_url, PREFECT_API_AUTH_STRING: exports["PREFECT_API_AUTH_STRING"]}

        # MLflow: a run, a metric, an artifact uploaded through the server, a registered model.
        client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
        run = client.create_run(client.create_experiment(EXPERIMENT))
        client.log_metric(run.info.run_id, "accuracy", 0.875)
        client.log_text(run.info.run_id, "kept", "notes/kept.txt")
        client.create_registered_model(MODEL)
        stored = list((tmp_path / "shared" / "mlflow-artifacts").rglob("kept.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "kept"  # in the shared folder, sent by the server
        # Prefect: a flow record in its PostgreSQL database.
        with temporary_settings(prefect_settings), get_client(sync_client=True) as prefect:
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
        with temporary_settings(prefect_settings), get_client(sync_client=True) as prefect:
            assert prefect.read_flow_by_name(FLOW).id == flow_id

        down = team("down", workspace, team_environment)
        assert down.returncode == 0 and "postgres" in down.stdout, down.stdout + down.stderr
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{mlflow_url}/health", timeout=5)

        again = team("up", workspace, team_environment)
        assert again.returncode == 0, again.stdout + again.stderr
        assert (team_dir / "credentials.json").read_text() == credentials  # reused, not generated again
        client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
        assert client.get_run(run.info.run_id).data.metrics == {"accuracy": 0.9}  # the latest step
        assert client.get_registered_model(MODEL).name == MODEL
        downloaded = client.download_artifacts(run.info.run_id, "notes/kept.txt", str(tmp_path / "download"))
        assert Path(downloaded).read_text() == "kept"
        with temporary_settings(prefect_settings), get_client(sync_client=True) as prefect:
            assert prefect.read_flow_by_name(FLOW).id == flow_id
        (workspace / "data.txt").unlink()
        subprocess.run(["dvc", "pull", "-q"], cwd=workspace, env=team_environment, check=True, capture_output=True)
        assert (workspace / "data.txt").read_text() == "versioned\n"
    finally:
        final = team("down", workspace, team_environment)
    assert final.returncode == 0
    assert "nothing was running" in team("down", workspace, team_environment).stdout


# The team block of docs/team.md is run as written, in a clone of the project's pipeline files on a tiny
# dataset: a deployment run by make team-up's worker against the team's servers, then a second clone
# that pulls and predicts, then make team-down.
TEAM_DOCUMENT = "docs/team.md"
TEAM_HEADING = "Team services: PostgreSQL-backed Prefect and MLflow, a shared DVC remote"
SEQUENCE_TIMEOUT_SECONDS = 1500
TINY_TEAM_PIPELINE = {
    "synthetic": {"writers": 3, "genuine_per_writer": 9, "skilled_per_writer": 2, "width": 120, "height": 80},
    "prepare": {"image_size": 75, "workers": 1},
    "train": {"epochs": 2, "augmented_views": 1},
    "evaluate": {"top_k": 2},
    "calibrate": {"target_far": 0.2},
}


def team_block() -> str:
    """The bash block of the team section of docs/team.md, as a reader copies it."""
    from tests.support.readme import read_blocks

    blocks = [
        block for block in read_blocks(PROJECT_ROOT / TEAM_DOCUMENT, TEAM_DOCUMENT) if block.heading == TEAM_HEADING
    ]
    assert len(blocks) == 1 and blocks[0].language == "bash", [block.line for block in blocks]
    return blocks[0].script()


def project_clone(root: Path, environment: dict[str, str]) -> Path:
    """A git clone of the project as `make venv` leaves it: the pipeline files, the checkout files
    (older than `.venv`, so make installs nothing) and `.venv` linked to this environment."""
    from tests.conftest import make_workspace
    from tests.integration.test_readme import add_checkout_files

    make_workspace(root)
    add_checkout_files(root)
    edit_params(root / "params.yaml", TINY_TEAM_PIPELINE)
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "clone"],
    ):
        subprocess.run(command, cwd=root, env=environment, check=True, capture_output=True)
    return root


def test_a_second_clone_pulls_the_data_and_predicts_with_the_servers_champion(
    tmp_path: Path, team_dir: Path, team_environment: dict[str, str]
) -> None:
    import json

    from tests.integration.test_readme import BASH_PRELUDE

    identity = {"GIT_AUTHOR_NAME": "team-test", "GIT_AUTHOR_EMAIL": "team-test@localhost"}
    environment = {
        **team_environment,
        **identity,
        "GIT_COMMITTER_NAME": identity["GIT_AUTHOR_NAME"],
        "GIT_COMMITTER_EMAIL": identity["GIT_AUTHOR_EMAIL"],
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "READMETEST_EXIT_CODES": "0",
        # git and dvc set up the clone before the block activates its .venv.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{team_environment.get('PATH', '')}",
    }
    first = project_clone(tmp_path / "first-clone", environment)
    settings = TeamSettings.from_environment(first, environment)
    try:
        sequence = subprocess.run(
            ["bash", "-c", BASH_PRELUDE + team_block()],
            cwd=first,
            env=environment,
            capture_output=True,
            text=True,
            timeout=SEQUENCE_TIMEOUT_SECONDS,
        )
        logs = "".join(path.read_text() for path in sorted(settings.run_dir.glob("*.log")))
        assert sequence.returncode == 0, sequence.stdout[-4000:] + sequence.stderr[-4000:] + logs[-6000:]
        # make team-down stopped the worker make team-up had started, then the servers and PostgreSQL.
        assert "stopped: worker, mlflow, prefect, postgres" in sequence.stdout, sequence.stdout[-3000:]
        # The model's files went through the MLflow server to the shared folder.
        assert any((tmp_path / "shared" / "mlflow-artifacts").rglob("classifier.keras"))
        # The second clone has the first one's numbers and answered with the server's champion,
        # without training: it has no MLflow store of its own.
        second = tmp_path / "second-clone"
        shown = {
            clone: subprocess.run(
                ["dvc", "metrics", "show", "--json"],
                cwd=clone,
                env=environment,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for clone in (first, second)
        }
        assert json.loads(shown[second]) == json.loads(shown[first].replace(str(first), str(second)))
        # Data, models, metrics and plots came with `dvc pull` (stage reports that carry MLflow runs stay
        # where they ran: dvc.yaml keeps those stages out of DVC's run cache).
        for pulled_file in ("models/classifier.keras", "data/prepared/manifest.csv", "plots/roc_det.png"):
            assert (second / pulled_file).is_file(), pulled_file
        assert not (second / "mlruns" / "mlflow.db").exists()
        # The worker's register signed with the team's key (SIGPIPE_SIGNING_KEY), not a key of its
        # workspace; the second clone trusted the team's public key from `tasks.services.team env`.
        assert settings.signing_key_files.public.is_file() and not (first / ".sigpipe").exists()
        answer = next(line for line in sequence.stdout.splitlines() if "1.tif" in line and "Genuine" in line)
        assert any(writer in answer.split() for writer in ("001", "002", "003", "unknown")), answer
    finally:
        team("down", first, team_environment)

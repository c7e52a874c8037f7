"""`make team-up`'s servers let no one in without the team's credentials (issue 27, point 1): real
PostgreSQL, Prefect and MLflow servers and the deployment's worker on 127.0.0.1, started once for
the module in a clone of the project's pipeline files; nothing is trained here."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tasks.services.team_settings import TeamCredentials, TeamSettings
from tests.integration.test_team_services import project_clone, team
from tests.support.environments import running_command_lines, services_clone_environment
from tests.support.model_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("team")]

REQUEST_SECONDS = 30
UNAUTHORIZED = 401
MODEL = "credentials-test-model"
DEPLOYMENT = ("signature-pipeline", "local")


@dataclass(frozen=True)
class SecuredTeam:
    """The running services of one `team up` and the environment a member's shell has after `eval`."""

    settings: TeamSettings
    credentials: TeamCredentials
    clients: dict[str, str]  # what `python -m tasks.services.team env` exports

    @property
    def mlflow_api(self) -> str:
        return f"{self.settings.mlflow_url}/api/2.0/mlflow"

    @property
    def mlflow_login(self) -> tuple[str, str]:
        return (self.clients["MLFLOW_TRACKING_USERNAME"], self.clients["MLFLOW_TRACKING_PASSWORD"])

    @property
    def prefect_login(self) -> tuple[str, str]:
        user, password = self.clients["PREFECT_API_AUTH_STRING"].split(":", 1)
        return (user, password)

    def secrets(self) -> list[str]:
        """Every generated password and key, and the database's."""
        credentials = self.credentials
        generated = [credentials.prefect_password, credentials.mlflow_password, credentials.mlflow_admin_password]
        return [*generated, credentials.flask_secret_key, self.settings.password()]


def exported(output: str) -> dict[str, str]:
    """The variables of `export NAME=value` lines, as a shell's `eval` sets them."""
    pairs = (shlex.split(line)[1].split("=", 1) for line in output.splitlines() if line.startswith("export "))
    return dict(pairs)


@pytest.fixture(scope="module")
def secured_team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredTeam]:
    """`python -m tasks.services.team up` in a clone of the project (so its worker runs too), with the team
    folder where PostgreSQL's user can enter it; `down` at the end."""
    folder = Path(tempfile.mkdtemp(prefix="sigpipe-team-credentials-"))
    folder.chmod(0o755)
    environment = services_clone_environment(
        "team-test",
        folder / "prefect-home",
        SIGPIPE_TEAM_DIR=str(folder / "team"),
        SIGPIPE_TEAM_SHARED=str(folder / "shared"),
        SIGPIPE_POSTGRES_PORT=str(free_port()),
        PREFECT_PORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
    )
    clone = project_clone(tmp_path_factory.mktemp("credentials") / "clone", environment)
    settings = TeamSettings.from_environment(clone, environment)
    try:
        up = team("up", clone, environment)
        assert up.returncode == 0, up.stdout + up.stderr
        assert 'eval "$(python -m tasks.services.team env)"' in up.stdout
        printed = team("env", clone, environment, "--operator")
        assert printed.returncode == 0, printed.stderr
        yield SecuredTeam(settings, TeamCredentials.load(settings.credentials_file), exported(printed.stdout))
    finally:
        team("down", clone, environment)
        shutil.rmtree(folder, ignore_errors=True)


def prefect_post(secured: SecuredTeam, path: str, login: tuple[str, str] | None) -> requests.Response:
    return requests.post(f"{secured.settings.prefect_api_url}/{path}", json={}, auth=login, timeout=REQUEST_SECONDS)


def mlflow_call(
    secured: SecuredTeam, method: str, path: str, body: dict | None, login: tuple[str, str] | None
) -> requests.Response:
    return requests.request(method, f"{secured.mlflow_api}/{path}", json=body, auth=login, timeout=REQUEST_SECONDS)


def test_the_prefect_api_refuses_requests_without_the_team_credentials(secured_team: SecuredTeam) -> None:
    deployments = prefect_post(secured_team, "deployments/filter", secured_team.prefect_login)
    assert deployments.status_code == 200, deployments.text
    names = {(entry["name"]) for entry in deployments.json()}
    assert DEPLOYMENT[1] in names  # deployed by team up with the credentials
    deployment_id = deployments.json()[0]["id"]
    assert prefect_post(secured_team, "deployments/filter", None).status_code == UNAUTHORIZED
    assert prefect_post(secured_team, "deployments/filter", ("sigpipe", "wrong")).status_code == UNAUTHORIZED
    run_request = f"deployments/{deployment_id}/create_flow_run"
    assert prefect_post(secured_team, run_request, None).status_code == UNAUTHORIZED
    runs = prefect_post(secured_team, "flow_runs/filter", secured_team.prefect_login)
    assert runs.status_code == 200 and runs.json() == []  # the refused request created nothing


def test_the_worker_reaches_its_server_with_the_credentials(secured_team: SecuredTeam) -> None:
    """The worker team up started polls the pool: the server knows it (it authenticated)."""
    import time

    deadline = time.monotonic() + REQUEST_SECONDS
    workers: list[dict] = []
    while not workers and time.monotonic() < deadline:
        answer = prefect_post(secured_team, "work_pools/signature-pool/workers/filter", secured_team.prefect_login)
        assert answer.status_code == 200, answer.text
        workers = answer.json()
        time.sleep(1)
    assert workers, (secured_team.settings.run_dir / "worker.log").read_text()[-3000:]
    assert "401" not in (secured_team.settings.run_dir / "worker.log").read_text()


def test_mlflow_refuses_reads_and_registry_writes_without_the_team_credentials(secured_team: SecuredTeam) -> None:
    from mlflow.tracking import MlflowClient

    # The team's account (as a member's shell has it after eval) writes a run and a model version.
    os.environ.update(secured_team.clients)
    try:
        client = MlflowClient()
        run = client.create_run(client.create_experiment("credentials-test"))
        client.log_text(run.info.run_id, "weights", "model/weights.txt")
        client.create_registered_model(MODEL)
        version = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id).version
    finally:
        for name in secured_team.clients:
            os.environ.pop(name, None)
    alias = {"name": MODEL, "alias": "champion", "version": version}
    login = secured_team.mlflow_login
    for body, method, path in (
        (None, "GET", "experiments/search?max_results=10"),
        (alias, "POST", "registered-models/alias"),
        ({"name": MODEL, "version": version}, "DELETE", "model-versions/delete"),
        ({"name": MODEL}, "DELETE", "registered-models/delete"),
        ({"username": "intruder", "password": "a-password-of-twelve"}, "POST", "users/create"),
    ):
        assert mlflow_call(secured_team, method, path, body, None).status_code == UNAUTHORIZED, path
        assert mlflow_call(secured_team, method, path, body, (login[0], "wrong")).status_code == UNAUTHORIZED, path
    # Nothing moved, nothing deleted: then the team's account does the same, and may.
    model = mlflow_call(secured_team, "GET", f"registered-models/get?name={MODEL}", None, login)
    assert model.status_code == 200 and "aliases" not in model.json()["registered_model"]
    assert mlflow_call(secured_team, "GET", "experiments/search?max_results=10", None, login).status_code == 200
    assert mlflow_call(secured_team, "POST", "registered-models/alias", alias, login).status_code == 200
    deleted = mlflow_call(secured_team, "DELETE", "model-versions/delete", {"name": MODEL, "version": version}, login)
    assert deleted.status_code == 200, deleted.text
    # The team's account is no admin: it cannot add users.
    added = mlflow_call(secured_team, "POST", "users/create", {"username": "x", "password": "y" * 12}, login)
    assert added.status_code == 403


def test_credential_files_are_private(secured_team: SecuredTeam) -> None:
    private = (
        secured_team.settings.credentials_file,
        secured_team.settings.mlflow_auth_config,
        secured_team.settings.signing_key_files.private,  # the team's model-signing key
    )
    for path in private:
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_no_secret_on_a_command_line_or_in_a_log(secured_team: SecuredTeam) -> None:
    """Checked last, after the servers, the worker and the clients above have run."""
    command_lines = running_command_lines()
    logs = {path: path.read_text(errors="replace") for path in secured_team.settings.run_dir.glob("*.log")}
    assert {"prefect.log", "mlflow.log", "worker.log", "deploy.log"} <= {path.name for path in logs}
    for secret in secured_team.secrets():
        assert not any(secret in line for line in command_lines)
        assert not [path for path, text in logs.items() if secret in text]

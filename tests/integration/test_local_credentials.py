"""`make up` (one user, 127.0.0.1) starts its Prefect and MLflow servers requiring the credentials it
generates into .run/credentials.env (issue 27, point 1): a web page or another local user that
reaches the ports gets 401. Real servers, started by the Makefile in a clone of the project's files."""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.test_team_services import project_clone
from tests.support.environments import running_command_lines, services_clone_environment
from tests.support.model_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("team")]

MAKE_TIMEOUT_SECONDS = 300
STARTUP_SECONDS = 120
REQUEST_SECONDS = 30
UNAUTHORIZED = 401
PRIVATE_MODE = 0o600
CREDENTIALS = Path(".run") / "credentials.env"


def make(target: str, clone: Path, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=clone,
        env=environment,
        capture_output=True,
        text=True,
        timeout=MAKE_TIMEOUT_SECONDS,
    )


def sourced(path: Path) -> dict[str, str]:
    """The variables `source path` sets (its `export NAME=value` lines)."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("export ")]
    return dict(shlex.split(line)[1].split("=", 1) for line in lines)


def wait_for(url: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=REQUEST_SECONDS).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer within {STARTUP_SECONDS} s")


@pytest.fixture(scope="module")
def made_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """`make up` in a clone of the project on free ports; `make down` at the end. The clone and make's
    variables (the ports)."""
    root = tmp_path_factory.mktemp("make-up")
    environment = services_clone_environment(
        "make-up-test",
        root / "prefect-home",
        PREFECT_PORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
        SCORER_PORT=str(free_port()),
    )
    clone = project_clone(root / "clone", environment)
    # No MLflow store yet, as in a fresh clone: make up's MLflow server creates it before its model server starts.
    try:
        up = make("up", clone, environment)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"source {CREDENTIALS}" in up.stdout
        wait_for(f"http://127.0.0.1:{environment['MLFLOW_PORT']}/health")
        yield clone, environment
    finally:
        make("down", clone, environment)


def test_make_up_servers_answer_only_with_the_generated_credentials(made_up: tuple[Path, dict[str, str]]) -> None:
    clone, environment = made_up
    credentials = sourced(clone / CREDENTIALS)
    prefect = f"http://127.0.0.1:{environment['PREFECT_PORT']}/api"
    mlflow = f"http://127.0.0.1:{environment['MLFLOW_PORT']}/api/2.0/mlflow"
    prefect_login = tuple(credentials["PREFECT_API_AUTH_STRING"].split(":", 1))
    mlflow_login = (credentials["MLFLOW_TRACKING_USERNAME"], credentials["MLFLOW_TRACKING_PASSWORD"])

    def prefect_post(path: str, login: tuple[str, ...] | None) -> requests.Response:
        return requests.post(f"{prefect}/{path}", json={}, auth=login, timeout=REQUEST_SECONDS)

    deployments = prefect_post("deployments/filter", prefect_login)
    assert deployments.status_code == 200 and deployments.json(), deployments.text  # deployed by make up
    deployment_id = deployments.json()[0]["id"]
    assert prefect_post("deployments/filter", None).status_code == UNAUTHORIZED
    assert prefect_post(f"deployments/{deployment_id}/create_flow_run", None).status_code == UNAUTHORIZED
    alias = {"name": "any-model", "alias": "champion", "version": "1"}
    for method, path, body in (
        ("GET", "experiments/search?max_results=10", None),
        ("POST", "registered-models/alias", alias),
        ("DELETE", "model-versions/delete", {"name": "any-model", "version": "1"}),
    ):
        answer = requests.request(method, f"{mlflow}/{path}", json=body, timeout=REQUEST_SECONDS)
        assert answer.status_code == UNAUTHORIZED, path
    searched = requests.get(f"{mlflow}/experiments/search?max_results=10", auth=mlflow_login, timeout=REQUEST_SECONDS)
    assert searched.status_code == 200, searched.text
    # The worker make up started reaches its server with the credentials of its environment.
    workers = prefect_post("work_pools/signature-pool/workers/filter", prefect_login)
    assert workers.status_code == 200, workers.text
    assert "401" not in (clone / ".run" / "worker.log").read_text()


def test_make_up_credentials_are_private_and_on_no_command_line_or_log(made_up: tuple[Path, dict[str, str]]) -> None:
    clone, _ = made_up
    assert (clone / CREDENTIALS).stat().st_mode & 0o777 == PRIVATE_MODE
    secrets = [value for name, value in sourced(clone / CREDENTIALS).items() if "PASSWORD" in name or "KEY" in name]
    secrets.append(sourced(clone / CREDENTIALS)["PREFECT_API_AUTH_STRING"].split(":", 1)[1])
    command_lines = running_command_lines()
    logs = [path.read_text(errors="replace") for path in (clone / ".run").glob("*.log")]
    assert len(logs) >= 4  # prefect-server, deploy, worker, mlflow (and the scorer's)
    for secret in secrets:
        assert not any(secret in line for line in command_lines)
        assert not any(secret in log for log in logs)

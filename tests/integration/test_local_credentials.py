"""`make up` (one user, 127.0.0.1) starts its Prefect and MLflow servers requiring the credentials it
generates into .run/credentials.env (issue 27, point 1): a web page or another local user that
reaches the ports gets 401; the worker and the model server get no server-side secret; a failed `up`
stops what it started. Real servers, started by the Makefile in a clone of the project's files."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tasks.services.team_settings import SERVER_SECRET_VARIABLES
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


def process_environment(run_dir: Path, name: str) -> dict[str, str] | None:
    """The environment of the service `name` (its pid file's pid, /proc/<pid>/environ); None when it
    is not running."""
    try:
        pid = int((run_dir / f"{name}.pid").read_text().split()[0])
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    pairs = (entry.decode(errors="replace").split("=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    return dict(pairs)


def test_make_ups_worker_and_model_server_get_no_server_side_secret(made_up: tuple[Path, dict[str, str]]) -> None:
    """Deployment runs execute on the worker and inherit its environment: the MLflow admin's password,
    MLflow's secret key and Prefect's server auth must not be there, nor in the model server's."""
    clone, _ = made_up
    run_dir = clone / ".run"
    credentials = sourced(clone / CREDENTIALS)
    server_secrets = [credentials[name] for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")]
    worker = process_environment(run_dir, "worker")
    assert worker is not None, (run_dir / "worker.log").read_text()
    assert worker["PREFECT_API_AUTH_STRING"] == credentials["PREFECT_API_AUTH_STRING"]  # it logs in as a client
    # The scorer exits at once where there is no champion yet (this clone has none): checked while it runs.
    clients = {"worker": worker, "scorer": process_environment(run_dir, "scorer")}
    for name, environment in clients.items():
        if environment is None:
            continue
        assert not SERVER_SECRET_VARIABLES & environment.keys(), name
        assert not any(secret in environment.values() for secret in server_secrets), name
    prefect_server = process_environment(run_dir, "prefect-server")
    mlflow_server = process_environment(run_dir, "mlflow")
    assert prefect_server is not None and mlflow_server is not None
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in prefect_server and "MLFLOW_FLASK_SERVER_SECRET_KEY" not in prefect_server
    assert "PREFECT_SERVER_API_AUTH_STRING" not in mlflow_server
    assert mlflow_server["MLFLOW_AUTH_ADMIN_PASSWORD"] == credentials["MLFLOW_AUTH_ADMIN_PASSWORD"]


def test_a_failed_up_stops_the_prefect_server_it_started(tmp_path: Path) -> None:
    """A step after the Prefect server started fails (here the deployment: the folder has no work pool
    template or prefect.yaml): `up` stops the server again, so the next `up` is not "already up"."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "dvc.yaml").write_text("stages: {}\n")
    prefect_port = free_port()
    environment = services_clone_environment(
        "failed-up-test",
        tmp_path / "prefect-home",
        PREFECT_PORT=str(prefect_port),
        MLFLOW_PORT=str(free_port()),
        SCORER_PORT=str(free_port()),
    )
    module = [sys.executable, "-m", "tasks.services.local_services"]
    try:
        up = subprocess.run(
            [*module, "up", "--run-dir", "run"],
            cwd=workspace,
            env=environment,
            capture_output=True,
            text=True,
            timeout=MAKE_TIMEOUT_SECONDS,
        )
        assert up.returncode == 1 and "work-pool create failed" in up.stderr, up.stdout + up.stderr
        assert (workspace / "run" / "prefect-server.log").exists()  # it had started
        assert not (workspace / "run" / "prefect-server.pid").exists()
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", prefect_port)) != 0  # nothing listens any more
    finally:
        subprocess.run([*module, "down", "--run-dir", "run"], cwd=workspace, env=environment, timeout=60)

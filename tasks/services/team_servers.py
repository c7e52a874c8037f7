"""The team's servers on one machine (`make team-up`, `python -m tasks.services.team up`): the Prefect server and
the MLflow tracking server on the team's PostgreSQL databases (tasks/services/team_postgres.py), each requiring
the team's credentials (tasks/services/team_settings.py), MLflow serving artifacts from the shared folder
(`--artifacts-destination`: clients upload and download through the server), the shared folder's DVC
remote as this repository's default, and in a clone of the project (a `prefect.yaml`) the pipeline's
deployment (work pool `signature-pool`) with a process worker that runs the stages against the team's
servers. The servers and the worker are `tasks.services.supervisor.Service`s in the team's run folder (pid files,
logs); `team_down` stops the worker first (a Prefect worker whose server is gone hangs in its graceful
shutdown), then the servers, then PostgreSQL; the databases stay in the team folder.

Model signing: the first `up` creates the team's key pair (tasks/registration/signing.py): the private key in the
team folder, given to the worker alone (SIGPIPE_SIGNING_KEY: its register stages sign with it), the
public key in the shared folder, which `env` names in SIGPIPE_VERIFY_KEY for every client.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tasks.registration.signing import SIGNING_KEY_VARIABLE, ensure_signing_key
from tasks.services.commands import COMMAND_TIMEOUT_SECONDS, ERROR_LINES, run, tool
from tasks.services.supervisor import SERVICE_STARTUP_SECONDS, Service, stop_services
from tasks.services.team_postgres import create_cluster, create_databases, migrate, start_postgres, stop_postgres
from tasks.services.team_settings import (
    MLFLOW_ADMIN,
    TEAM_USER,
    TeamCredentials,
    TeamSettings,
    clients_environment,
    ensure_credentials,
    without_server_secrets,
    write_mlflow_auth_config,
)
from tasks.workspace.errors import ConfigError

MLFLOW_AUTH_APP = "basic-auth"
# What the team's account gets, once when it is created, on what was there before (a team folder
# from before credentials): it keeps writing to its experiments and models.
MEMBER_PERMISSION = "MANAGE"
ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
# MLflow's REST paths the admin uses (the auth app's user and permission APIs are version 3).
CREATE_USER_PATH = "/api/2.0/mlflow/users/create"
GRANT_PATH = "/api/3.0/mlflow/users/permissions/grant"
SEARCHES = {  # resource type of a grant: (search path, key of its items, field naming one item)
    "experiment": ("/api/2.0/mlflow/experiments/search", "experiments", "experiment_id"),
    "registered_model": ("/api/2.0/mlflow/registered-models/search", "registered_models", "name"),
}
SEARCH_PAGE_SIZE = 1000
REQUEST_TIMEOUT_SECONDS = 30
ERROR_CHARACTERS = 200  # of a refused request's answer, in the error naming it
DVC_REMOTE_NAME = "team"
# Stopped in this order, before PostgreSQL: a Prefect worker whose server is gone hangs in its
# graceful shutdown, so the worker goes first.
SERVERS = ("worker", "mlflow", "prefect")
STOP_TIERS = (("worker",), ("mlflow", "prefect"))  # the worker, then both servers at once
# How often the worker asks the server for scheduled runs, unless the user set it: a deployment run starts
# within 2 s instead of Prefect's default 10 (one request to a server on the team's network each time).
WORKER_QUERY_SECONDS = "2"
WORK_POOL = "signature-pool"  # prefect.yaml's deployments run on this process work pool
WORK_POOL_TEMPLATE = "flows/work_pool.json"  # a run request changes no command, folder or environment
DEPLOYMENT_FILE = "prefect.yaml"
DEPLOYMENT = "signature-pipeline/local"  # what `prefect deployment run` starts
DEPLOY_LOG = "deploy.log"


def service(settings: TeamSettings, name: str) -> Service:
    """One of the team's SERVERS: pid file and log in the team's run folder."""
    return Service(name, settings.run_dir)


def prefect_server_command(host: str, port: int) -> list[str]:
    """`prefect server start` on `host:port` (its database and credentials come from the environment)."""
    return [tool("prefect"), "server", "start", "--host", host, "--port", str(port)]


def mlflow_server_command(host: str, port: int, storage: list[str]) -> list[str]:
    """`mlflow server` with its basic-auth app, one worker, on `host:port`, with the `storage` options
    (where runs and artifacts go); its auth configuration and secrets come from the environment."""
    command = [tool("mlflow"), "server", "--app-name", MLFLOW_AUTH_APP, *storage]
    return [*command, "--host", host, "--port", str(port), "--workers", "1"]


def mlflow_server_environment(base: Mapping[str, str], auth_config: Path, flask_secret_key: str) -> dict[str, str]:
    """The MLflow server's environment: `base` with its auth app's configuration file and secret key (its
    admin's password is in that private file, or in `base` where the caller adds it), job execution off."""
    return {
        **base,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret_key,
    }


def worker_command(pool: str = WORK_POOL) -> list[str]:
    """A process worker of `pool` (its server's URL and credentials come from the environment)."""
    return [tool("prefect"), "worker", "start", "--pool", pool]


def worker_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: `environment`, with the query interval WORKER_QUERY_SECONDS unless set."""
    return {"PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS, **environment}


def deploy_pipeline(
    root: Path, environment: Mapping[str, str], log: Path, keep_pool: bool, pool: str = WORK_POOL
) -> None:
    """The process work pool (template WORK_POOL_TEMPLATE) and the deployments of `root`'s prefect.yaml
    (`prefect deploy --all`, its output in `log`: its "start a worker" hint is done by the caller). With
    `keep_pool`, a pool that exists is kept as it is (a concurrency limit the team set), else replaced.
    The deployments' URLs and credentials come from `environment`, never a command line."""
    create = [tool("prefect"), "work-pool", "create", pool, "--type", "process"]
    create += ["--base-job-template", WORK_POOL_TEMPLATE]
    if keep_pool:
        inspect = [tool("prefect"), "work-pool", "inspect", pool]
        inspected = subprocess.run(
            inspect, env=dict(environment), cwd=root, capture_output=True, timeout=COMMAND_TIMEOUT_SECONDS
        )
        if inspected.returncode == 0:
            create = []
    else:
        create.append("--overwrite")
    if create:
        run(create, environment, what="prefect work-pool create", cwd=root)
    with log.open("w") as output:
        deployed = subprocess.run(
            [tool("prefect"), "--no-prompt", "deploy", "--all"],
            env={**environment, "SIGPIPE_ROOT": str(root)},
            cwd=root,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
    if deployed.returncode != 0:
        last_lines = log.read_text(errors="replace").strip().splitlines()[-ERROR_LINES:]
        raise ConfigError(
            f"prefect deploy --all failed (exit {deployed.returncode}; see {log}): {' | '.join(last_lines)}"
        )


def start_servers(settings: TeamSettings, credentials: TeamCredentials) -> None:
    """The Prefect server and the MLflow tracking server on the team's databases, each requiring
    the team's credentials (secrets in their environment and MLflow's private auth file)."""
    base = without_server_secrets(os.environ)
    prefect_environment = {
        **base,
        "PREFECT_API_DATABASE_CONNECTION_URL": settings.database_url("prefect", "postgresql+asyncpg"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_AUTH_STRING": credentials.prefect_auth_string,
    }
    prefect = service(settings, "prefect")
    prefect_process = prefect.start(prefect_server_command(settings.host, settings.prefect_port), prefect_environment)
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    write_mlflow_auth_config(settings, credentials)
    # The store's URL (with its password) goes through the environment, not the command line `ps` shows.
    mlflow_environment = mlflow_server_environment(base, settings.mlflow_auth_config, credentials.flask_secret_key)
    mlflow_environment["MLFLOW_BACKEND_STORE_URI"] = settings.database_url("mlflow")
    storage = ["--artifacts-destination", str(settings.artifacts_dir), "--serve-artifacts"]
    mlflow_command = mlflow_server_command(settings.host, settings.mlflow_port, storage)
    mlflow = service(settings, "mlflow")
    mlflow_process = mlflow.start(mlflow_command, mlflow_environment)
    prefect.wait_until_healthy(
        f"{settings.prefect_api_url}/health", "the Prefect server", SERVICE_STARTUP_SECONDS, prefect_process
    )
    mlflow.wait_until_healthy(
        f"{settings.mlflow_url}/health", "the MLflow server", SERVICE_STARTUP_SECONDS, mlflow_process
    )


def mlflow_admin_request(
    settings: TeamSettings, credentials: TeamCredentials, method: str, path: str, **kwargs: object
) -> dict:
    """One request to MLflow's REST API as its admin; the JSON answer. Any error but "already
    exists" raises ConfigError (the answer's message, never the credentials)."""
    import requests

    response = requests.request(
        method,
        settings.mlflow_url + path,
        auth=(MLFLOW_ADMIN, credentials.mlflow_admin_password),
        timeout=REQUEST_TIMEOUT_SECONDS,
        # requests types each keyword (a TypedDict), which object-valued **kwargs cannot match; they are
        # the callers' params= or json=, forwarded as given.
        **kwargs,  # type: ignore[arg-type]
    )
    answer = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.ok or answer.get("error_code") == ALREADY_EXISTS:
        return answer
    raise ConfigError(
        f"MLflow's {path} as its admin failed (HTTP {response.status_code}: {response.text[:ERROR_CHARACTERS]}); "
        "a server started before credentials existed answers 404 there: make team-down, then make team-up"
    )


def search_all(settings: TeamSettings, credentials: TeamCredentials, path: str, key: str) -> list[dict]:
    """Every item of one of MLflow's paged searches (experiments, registered models), as the admin."""
    items: list[dict] = []
    page_token = ""
    while True:
        query = {"max_results": SEARCH_PAGE_SIZE, "page_token": page_token}
        answer = mlflow_admin_request(settings, credentials, "GET", path, params=query)
        items += answer.get(key, [])
        page_token = answer.get("next_page_token", "")
        if not page_token:
            return items


def ensure_team_account(settings: TeamSettings, credentials: TeamCredentials) -> None:
    """The team's MLflow account (not an admin). When it is created, it gets MANAGE on the
    experiments and models already there (a team folder from before credentials), so the pipeline
    keeps writing to them; later ones it owns by creating them."""
    account = {"username": TEAM_USER, "password": credentials.mlflow_password}
    if "user" not in mlflow_admin_request(settings, credentials, "POST", CREATE_USER_PATH, json=account):
        return
    for resource_type, (path, key, field) in SEARCHES.items():
        for item in search_all(settings, credentials, path, key):
            grant = {"resource_type": resource_type, "resource_id": item[field], "permission": MEMBER_PERMISSION}
            mlflow_admin_request(settings, credentials, "POST", GRANT_PATH, json={"username": TEAM_USER, **grant})


def deploy_and_start_worker(settings: TeamSettings, credentials: TeamCredentials) -> bool:
    """In a clone of the project: the work pool (created once), the deployments of prefect.yaml and a
    process worker that runs them with the team's servers. False where the repository has no prefect.yaml."""
    if not (settings.root / DEPLOYMENT_FILE).is_file():
        return False
    environment = clients_environment(settings, credentials)
    deploy_pipeline(settings.root, environment, settings.run_dir / DEPLOY_LOG, keep_pool=True)
    # The worker's register stages sign with the team's key (the only process given the private half).
    signing = {**environment, SIGNING_KEY_VARIABLE: str(settings.signing_key_files.private)}
    service(settings, "worker").start(worker_command(), worker_environment(signing))
    return True


def add_dvc_remote(settings: TeamSettings) -> bool:
    """Make the shared folder's DVC remote this repository's default (`dvc remote add -d`); False
    when the folder is not a DVC repository."""
    if not (settings.root / ".dvc").is_dir():
        return False
    settings.dvc_remote_dir.mkdir(parents=True, exist_ok=True)
    run(
        [tool("dvc"), "remote", "add", "--default", "--force", DVC_REMOTE_NAME, str(settings.dvc_remote_dir)],
        {**os.environ, "DVC_NO_ANALYTICS": "1"},
        what="dvc remote add",
        cwd=settings.root,
    )
    return True


def team_up(settings: TeamSettings) -> None:
    """Create what is missing, start everything, and point DVC at the shared remote."""
    create_cluster(settings)
    start_postgres(settings)
    create_databases(settings)
    migrate(settings)
    credentials = ensure_credentials(settings)
    settings.shared_dir.mkdir(parents=True, exist_ok=True)
    ensure_signing_key(settings.signing_key_files)  # before any client needs the public half
    start_servers(settings, credentials)
    ensure_team_account(settings, credentials)
    add_dvc_remote(settings)
    deploy_and_start_worker(settings, credentials)


def team_down(settings: TeamSettings) -> list[str]:
    """Stop the worker, the servers, then PostgreSQL; the names of what was running."""
    try:
        stopped = stop_services(*([service(settings, name) for name in tier] for tier in STOP_TIERS))
    finally:
        postgres_stopped = stop_postgres(settings)  # even when a server could not be stopped
    return [*stopped, "postgres"] if postgres_stopped else stopped

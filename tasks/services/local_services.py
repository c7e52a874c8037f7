"""`make up` / `make down` (`python -m tasks.services.local_services up|down`): this workspace's services on
127.0.0.1, supervised by tasks/services/supervisor.py, with their pid files and logs in the run folder (.run/).

`up` starts the Prefect server (runs kept in PREFECT_HOME), waits for it, creates the work pool and
deploys prefect.yaml's deployments (log: deploy.log), starts a process worker, the MLflow server on the
workspace's own store (mlruns/) and, once MLflow has created that store (two processes creating a new
SQLite schema at once fail), the champion's model server (`sigpipe serve`, which follows the champion as
it moves; with no champion yet it says so in its log and waits for the first one). It refuses to start
when the Prefect server already runs. `down` stops them in the reverse order: TERM to each process
group, KILL after 10 s.

Credentials: generated into the run folder's credentials.env the first time (mode 0600 from creation;
`source` it for a client), and MLflow's auth configuration beside it, its users in mlflow-auth.db. Each
process gets, through its environment (never a command line), only what it needs: the Prefect server
its server auth string, the MLflow server its auth configuration, secret key and admin password, the
worker the Prefect client's auth string; the worker's stages and the model server use the workspace's
own MLflow store (mlruns/), so no MLflow credential. None gets a server's secret, even from a shell
that sourced credentials.env. When a step fails after the Prefect server started, what `up` started is
stopped again, so the next `up` does not find it "already up".
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from tasks.scoring.champion_follower import DEFAULT_FOLLOW_SECONDS
from tasks.services.commands import tool
from tasks.services.supervisor import SERVICE_STARTUP_SECONDS, Service, stop_services
from tasks.services.team_servers import (
    WORK_POOL,
    deploy_pipeline,
    mlflow_server_command,
    mlflow_server_environment,
    prefect_server_command,
    worker_command,
)
from tasks.services.team_settings import (
    AUTHORIZATION_FUNCTION,
    LOCAL_HOST,
    MLFLOW_ADMIN,
    MLFLOW_AUTH_CONFIG_FILE,
    MLFLOW_DEFAULT_PERMISSION,
    PREFECT_AUTH_VARIABLE,
    TeamCredentials,
    without_server_secrets,
    write_ini,
)
from tasks.workspace.errors import ConfigError, ServiceError
from tasks.workspace.files import write_private_file
from tasks.workspace.prefect_home import keep_prefect_state_in_workspace

DEFAULT_RUN_DIR = ".run"
LOCAL_CREDENTIALS_FILE = "credentials.env"
LOCAL_AUTH_DATABASE_FILE = "mlflow-auth.db"
# The services, as `down` stops them: the clients (model server, worker) at once, then the servers they talk to at once.
STOP_TIERS = (("scorer", "worker"), ("mlflow", "prefect-server"))
ALREADY_UP = "already up (make down first)"
TITLES = {"prefect-server": "the Prefect server", "mlflow": "the MLflow server"}  # in errors naming a server

app = typer.Typer(help="make up / make down: this workspace's Prefect, MLflow and model servers.", no_args_is_help=True)


def local_variables(run_dir: Path, credentials: TeamCredentials) -> dict[str, str]:
    """What `make up`'s servers, worker and clients need: the Prefect auth string (server and
    clients), MLflow's auth app settings (its admin is the user, the only account) and the account
    MLflow's clients log in with."""
    return {
        "PREFECT_SERVER_API_AUTH_STRING": credentials.prefect_auth_string,
        "PREFECT_API_AUTH_STRING": credentials.prefect_auth_string,
        "MLFLOW_AUTH_CONFIG_PATH": str(run_dir / MLFLOW_AUTH_CONFIG_FILE),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": credentials.flask_secret_key,
        "MLFLOW_AUTH_ADMIN_PASSWORD": credentials.mlflow_admin_password,
        "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
        "MLFLOW_TRACKING_PASSWORD": credentials.mlflow_admin_password,
    }


def ensure_local_credentials(run_dir: Path) -> Path:
    """`make up`'s credentials file (`export` lines, mode 0600 from creation), generated the first
    time, and MLflow's auth configuration beside it (no secret in it: the admin's password comes
    from the environment, MLFLOW_AUTH_ADMIN_PASSWORD). The credentials file's path."""
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    credentials_file = run_dir / LOCAL_CREDENTIALS_FILE
    if not credentials_file.exists():
        variables = local_variables(run_dir, TeamCredentials.generate())
        lines = [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
        write_private_file(credentials_file, "# make up's credentials: keep private\n" + "\n".join(lines) + "\n")
    values = {
        "default_permission": MLFLOW_DEFAULT_PERMISSION,
        "database_uri": f"sqlite:///{run_dir / LOCAL_AUTH_DATABASE_FILE}",
        "admin_username": MLFLOW_ADMIN,
        "authorization_function": AUTHORIZATION_FUNCTION,
    }
    write_ini(run_dir / MLFLOW_AUTH_CONFIG_FILE, values)
    return credentials_file


def sourced_variables(credentials_file: Path) -> dict[str, str]:
    """The variables `source credentials_file` sets (its `export NAME=value` lines)."""
    lines = [line for line in credentials_file.read_text().splitlines() if line.startswith("export ")]
    return dict(shlex.split(line)[1].split("=", 1) for line in lines)


def service_environments(credentials: dict[str, str], prefect_url: str) -> dict[str, dict[str, str]]:
    """Each process's environment (the names in STOP_TIERS, and "deploy" for the deployment's commands): this
    environment without the servers' secrets nor any value of credentials.env (a shell that sourced it
    holds the MLflow admin's login), plus what that process needs of `credentials` and no more."""
    base = without_server_secrets(os.environ)
    base = {name: value for name, value in base.items() if credentials.get(name) != value}
    clients = {**base, "PREFECT_API_URL": prefect_url, PREFECT_AUTH_VARIABLE: credentials[PREFECT_AUTH_VARIABLE]}
    auth_config = Path(credentials["MLFLOW_AUTH_CONFIG_PATH"])
    mlflow = mlflow_server_environment(base, auth_config, credentials["MLFLOW_FLASK_SERVER_SECRET_KEY"])
    return {
        "prefect-server": {**base, "PREFECT_SERVER_API_AUTH_STRING": credentials["PREFECT_SERVER_API_AUTH_STRING"]},
        "deploy": clients,
        "worker": clients,
        "mlflow": {**mlflow, "MLFLOW_AUTH_ADMIN_PASSWORD": credentials["MLFLOW_AUTH_ADMIN_PASSWORD"]},
        "scorer": base,  # it reads the workspace's own MLflow store (mlruns/): no credential
    }


def local_up(
    root: Path, run_dir: Path, ports: tuple[int, int, int], worker_query_seconds: str, pool: str = WORK_POOL
) -> bool:
    """Start what `make up` starts (see the module's docstring); `ports`: Prefect's, MLflow's, the model
    server's. False, and nothing started, when the Prefect server already runs; a server that does not
    answer raises ServiceError naming its log, a failed deployment ConfigError, and either stops what
    was started."""
    credentials = sourced_variables(ensure_local_credentials(run_dir))
    prefect = Service("prefect-server", run_dir)
    if prefect.running_pid() is not None:
        return False
    started: list[Service] = []
    try:
        start_local_services(root, run_dir, ports, worker_query_seconds, pool, credentials, started)
    except BaseException:
        with contextlib.suppress(ServiceError):  # the failure that stopped `up` is the one to report
            stop_services(*([service] for service in started[::-1]))  # the last started first
        raise
    return True


def start_local_services(
    root: Path,
    run_dir: Path,
    ports: tuple[int, int, int],
    worker_query_seconds: str,
    pool: str,
    credentials: dict[str, str],
    started: list[Service],
) -> None:
    """`local_up`'s work, each service appended to `started` as it starts, each with its own environment.
    The Prefect and MLflow servers start together (each takes seconds to answer, on its own core); the
    worker starts once Prefect answers and the deployment is made, the model server once MLflow answers
    (its store is the one the MLflow server creates in a fresh clone)."""
    prefect_port, mlflow_port, scorer_port = ports

    def start(name: str, command: list[str], environment: dict[str, str]) -> Callable[[str], None]:
        """Start the service `name` (recorded in `started`); returns the wait for its health URL."""
        service = Service(name, run_dir)
        process = service.start(command, environment, append_log=False)
        if process is not None:
            started.append(service)
        return lambda url: service.wait_until_healthy(url, TITLES.get(name, name), SERVICE_STARTUP_SECONDS, process)

    prefect_url = f"http://{LOCAL_HOST}:{prefect_port}/api"
    environments = service_environments(credentials, prefect_url)
    prefect_command = prefect_server_command(LOCAL_HOST, prefect_port)
    prefect_ready = start("prefect-server", prefect_command, environments["prefect-server"])
    storage = ["--backend-store-uri", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"]
    storage += ["--default-artifact-root", str(root / "mlruns" / "artifacts")]
    mlflow_ready = start("mlflow", mlflow_server_command(LOCAL_HOST, mlflow_port, storage), environments["mlflow"])
    prefect_ready(f"{prefect_url}/health")
    deploy_pipeline(root, environments["deploy"], run_dir / "deploy.log", keep_pool=False, pool=pool)
    worker = {**environments["worker"], "PREFECT_WORKER_QUERY_SECONDS": worker_query_seconds}
    start("worker", worker_command(pool), worker)
    mlflow_ready(f"http://{LOCAL_HOST}:{mlflow_port}/health")
    # The model server follows the champion: a version register moves it to is checked and served, no restart.
    scorer = [tool("sigpipe"), "serve", "--port", str(scorer_port), "--follow-seconds", f"{DEFAULT_FOLLOW_SECONDS:g}"]
    start("scorer", scorer, environments["scorer"])


def local_down(run_dir: Path) -> list[str]:
    """Stop what `local_up` started (TERM, then KILL after the supervisor's grace period); the names of
    those that were running. One that cannot be stopped raises ServiceError once all were tried."""
    return stop_services(*([Service(name, run_dir) for name in tier] for tier in STOP_TIERS))


@app.callback()
def in_this_workspace() -> None:
    """Every command: Prefect's state in this workspace's .prefect/ unless PREFECT_HOME is set (the
    Prefect server started here keeps its runs there), as `make` and the flows keep it."""
    keep_prefect_state_in_workspace(Path.cwd())


@app.command()
def up(
    run_dir: Annotated[Path, typer.Option(help="pid files, logs and credentials")] = Path(DEFAULT_RUN_DIR),
    prefect_port: Annotated[int, typer.Option(envvar="PREFECT_PORT")] = 4200,
    mlflow_port: Annotated[int, typer.Option(envvar="MLFLOW_PORT")] = 5000,
    scorer_port: Annotated[int, typer.Option(envvar="SCORER_PORT")] = 5001,
    worker_query_seconds: Annotated[str, typer.Option(envvar="PREFECT_WORKER_QUERY_SECONDS")] = "2",
    work_pool: Annotated[str, typer.Option()] = WORK_POOL,
) -> None:
    """Start, on 127.0.0.1, the Prefect server, a worker with the deployment, the MLflow server and the
    champion's model server (all requiring RUN_DIR/credentials.env)."""
    ports = (prefect_port, mlflow_port, scorer_port)
    try:
        started = local_up(Path.cwd(), run_dir, ports, worker_query_seconds, work_pool)
    except (ConfigError, ServiceError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    if not started:
        typer.echo(ALREADY_UP)
        raise typer.Exit(code=1)


@app.command()
def down(
    run_dir: Annotated[Path, typer.Option(help="pid files, logs and credentials")] = Path(DEFAULT_RUN_DIR),
) -> None:
    """Stop what `up` started (TERM, then KILL after 10 s)."""
    try:
        stopped = local_down(run_dir)
    except ServiceError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    for name in stopped:
        typer.echo(f"stopped {name}")


if __name__ == "__main__":
    app()

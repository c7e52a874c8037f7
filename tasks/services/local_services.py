"""`make up` / `make down` (`python -m tasks.services.local_services up|down`): this workspace's services on
127.0.0.1, supervised by tasks/services/supervisor.py, with their pid files and logs in the run folder (.run/).

`up` starts the Prefect server (runs kept in PREFECT_HOME), waits for it, creates the work pool and
deploys prefect.yaml's deployments (log: deploy.log), starts a process worker, the MLflow server on the
workspace's own store (mlruns/) and, once MLflow has created that store (two processes creating a new
SQLite schema at once fail), the champion's model server (`sigpipe serve`, which follows the champion as
it moves, and exits at once, saying so in its log, when there is no champion yet). It refuses to start
when the Prefect server already runs. `down` stops them in the reverse order: TERM to each process
group, KILL after 10 s.

Credentials: generated into the run folder's credentials.env the first time (mode 0600 from creation;
`source` it for a client), and MLflow's auth configuration beside it, its users in mlflow-auth.db. The
servers, the worker and the model server get them through their environment, never a command line.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from tasks.scoring.champion_follower import DEFAULT_FOLLOW_SECONDS
from tasks.services.commands import tool
from tasks.services.supervisor import Service
from tasks.services.team_servers import (
    MLFLOW_AUTH_APP,
    WORK_POOL,
    deploy_pipeline,
    prefect_server_command,
    worker_command,
)
from tasks.services.team_settings import (
    AUTHORIZATION_FUNCTION,
    MLFLOW_ADMIN,
    MLFLOW_AUTH_CONFIG_FILE,
    MLFLOW_DEFAULT_PERMISSION,
    TeamCredentials,
    write_ini,
)
from tasks.workspace.errors import ConfigError, ServiceError
from tasks.workspace.files import write_private_file
from tasks.workspace.prefect_home import keep_prefect_state_in_workspace

DEFAULT_RUN_DIR = ".run"
LOCAL_CREDENTIALS_FILE = "credentials.env"
LOCAL_AUTH_DATABASE_FILE = "mlflow-auth.db"
LOCAL_HOST = "127.0.0.1"
STARTUP_SECONDS = 90
STOP_GRACE_SECONDS = 10
# Stopped in this order: the model server and the worker before the servers they talk to.
SERVICES = ("scorer", "worker", "mlflow", "prefect-server")
ALREADY_UP = "already up (make down first)"
# What of credentials.env the services get (the servers' auth and the clients' Prefect login).
SERVICE_VARIABLES = (
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_API_AUTH_STRING",
    "MLFLOW_AUTH_CONFIG_PATH",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
)

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


def local_up(
    root: Path, run_dir: Path, ports: tuple[int, int, int], worker_query_seconds: str, pool: str = WORK_POOL
) -> bool:
    """Start what `make up` starts (see the module's docstring); `ports`: Prefect's, MLflow's, the model
    server's. False, and nothing started, when the Prefect server already runs; a server that does not
    answer raises ServiceError naming its log."""
    prefect_port, mlflow_port, scorer_port = ports
    credentials = sourced_variables(ensure_local_credentials(run_dir))
    prefect = Service("prefect-server", run_dir)
    if prefect.running_pid() is not None:
        return False
    environment = {**os.environ, **{name: credentials[name] for name in SERVICE_VARIABLES}}
    prefect_url = f"http://{LOCAL_HOST}:{prefect_port}/api"
    process = prefect.start(prefect_server_command(LOCAL_HOST, prefect_port), environment, append_log=False)
    prefect.wait_until_healthy(f"{prefect_url}/health", "the Prefect server", STARTUP_SECONDS, process)
    clients = {**environment, "PREFECT_API_URL": prefect_url}
    deploy_pipeline(root, clients, run_dir / "deploy.log", keep_pool=False, pool=pool)
    worker = {**clients, "PREFECT_WORKER_QUERY_SECONDS": worker_query_seconds}
    Service("worker", run_dir).start(worker_command(pool), worker, append_log=False)
    mlflow = Service("mlflow", run_dir)
    mlflow_command = [tool("mlflow"), "server", "--app-name", MLFLOW_AUTH_APP]
    mlflow_command += ["--backend-store-uri", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"]
    mlflow_command += ["--default-artifact-root", str(root / "mlruns" / "artifacts")]
    mlflow_command += ["--host", LOCAL_HOST, "--port", str(mlflow_port), "--workers", "1"]
    mlflow_environment = {**environment, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_process = mlflow.start(mlflow_command, mlflow_environment, append_log=False)
    mlflow_url = f"http://{LOCAL_HOST}:{mlflow_port}/health"
    mlflow.wait_until_healthy(mlflow_url, "the MLflow server", STARTUP_SECONDS, mlflow_process)
    # The model server follows the champion: a version register moves it to is checked and served, no restart.
    scorer = [tool("sigpipe"), "serve", "--port", str(scorer_port), "--follow-seconds", f"{DEFAULT_FOLLOW_SECONDS:g}"]
    Service("scorer", run_dir).start(scorer, environment, append_log=False)
    return True


def local_down(run_dir: Path) -> list[str]:
    """Stop what `local_up` started (TERM, then KILL after STOP_GRACE_SECONDS); the names of those that
    had a pid file."""
    services = [Service(name, run_dir) for name in SERVICES]
    had_pid_file = [service for service in services if service.pid_file.exists()]
    for service in had_pid_file:
        service.stop(STOP_GRACE_SECONDS)
    return [service.name for service in had_pid_file]


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
    for name in local_down(run_dir):
        typer.echo(f"stopped {name}")


if __name__ == "__main__":
    app()

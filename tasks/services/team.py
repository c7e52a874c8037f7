"""`make team-up` / `make team-down` and the team's client settings: `python -m tasks.services.team up|down|env|
local-credentials` (the command line; the work is in tasks/services/team_settings.py, tasks/services/team_postgres.py,
tasks/services/team_servers.py and, for `make up`'s credentials, tasks/services/local_services.py).

`up` creates, the first time, a PostgreSQL cluster in the team folder with a role (generated password,
mode 0600) and one database per tool, applies each tool's own schema migrations, starts PostgreSQL, the
Prefect server and the MLflow tracking server (requiring the team's generated credentials; artifacts
served from the shared folder), all bound to 127.0.0.1 unless SIGPIPE_TEAM_HOST names another address,
makes the shared folder's `dvc-remote` this repository's default DVC remote and, in a clone of the
project, deploys the pipeline and starts a process worker. `down` stops the worker, the servers, then
PostgreSQL; the databases stay in the team folder. `env` prints the `export` lines a team member's
shell evaluates (`--operator`: Prefect's credential too).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from tasks.services.local_services import DEFAULT_RUN_DIR, ensure_local_credentials
from tasks.services.team_servers import DEPLOYMENT, WORK_POOL, service, team_down, team_up
from tasks.services.team_settings import TeamCredentials, TeamSettings, client_exports
from tasks.workspace.errors import ConfigError, ServiceError
from tasks.workspace.prefect_home import keep_prefect_state_in_workspace

ENV_HINT = 'eval "$(python -m tasks.services.team env)"'
OPERATOR_ENV_HINT = 'eval "$(python -m tasks.services.team env --operator)"'

app = typer.Typer(help="PostgreSQL-backed Prefect and MLflow servers and a shared DVC remote.", no_args_is_help=True)


@app.callback()
def in_this_workspace() -> None:
    """Every command: Prefect's state in this workspace's .prefect/ unless PREFECT_HOME is set (the
    servers and the worker started here inherit it), as `make` and the flows keep it."""
    keep_prefect_state_in_workspace(Path.cwd())


def settings_here() -> TeamSettings:
    """The team's settings for the repository in the current folder, from this environment."""
    return TeamSettings.from_environment(Path.cwd(), os.environ)


@app.command()
def up() -> None:
    """Start PostgreSQL, the Prefect server and the MLflow server (created the first time), and in a
    clone of the project the deployment's worker."""
    settings = settings_here()
    try:
        team_up(settings)
    except (ConfigError, ServiceError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(f"PostgreSQL: {settings.host}:{settings.postgres_port} (data in {settings.postgres_dir})")
    typer.echo(f"Prefect:    {settings.prefect_api_url}   MLflow: {settings.mlflow_url}   logs: {settings.run_dir}")
    typer.echo(f"Artifacts:  {settings.artifacts_dir} (served by MLflow)   DVC remote: {settings.dvc_remote_dir}")
    if service(settings, "worker").running_pid() is not None:
        typer.echo(
            f"Worker:     pool '{WORK_POOL}', deployment '{DEPLOYMENT}' (more: prefect worker start --pool {WORK_POOL})"
        )
    typer.echo(f"Use them:   {ENV_HINT}   (their URLs and the credentials in {settings.credentials_file}, mode 0600)")
    typer.echo(f"Operators:  {OPERATOR_ENV_HINT}   (also Prefect's credential: deployment runs, the worker)")


@app.command()
def env(
    operator: Annotated[
        bool,
        typer.Option("--operator", help="Also the Prefect credential (deployment runs; code execution on the worker)."),
    ] = False,
) -> None:
    """Print the `export` lines of the servers' URLs and the team's credentials, for
    `eval "$(python -m tasks.services.team env)"` (nothing else is printed: the output holds passwords)."""
    settings = settings_here()
    if not settings.credentials_file.is_file():
        typer.echo(f"error: {settings.credentials_file} does not exist yet: run make team-up first", err=True)
        raise typer.Exit(code=1)
    exports = client_exports(settings, TeamCredentials.load(settings.credentials_file), operator)
    for name, value in exports.items():
        typer.echo(f"export {name}={shlex.quote(value)}")


@app.command("local-credentials")
def local_credentials(
    run_dir: Annotated[Path, typer.Argument(help="make up's folder of pid files and logs")] = Path(DEFAULT_RUN_DIR),
) -> None:
    """`make up`'s credentials: generated into RUN_DIR/credentials.env the first time (mode 0600),
    with MLflow's auth configuration beside them; prints nothing secret (`source` that file)."""
    typer.echo(f"credentials: {ensure_local_credentials(run_dir)}")


@app.command()
def down() -> None:
    """Stop the servers and PostgreSQL; the databases are kept for the next `up`."""
    try:
        stopped = team_down(settings_here())
    except ServiceError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


if __name__ == "__main__":
    app()

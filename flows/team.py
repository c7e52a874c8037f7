"""Team services on one machine: PostgreSQL-backed Prefect and MLflow servers and a shared DVC remote.

`make team-up` (`python -m flows.team up`) creates, the first time, a PostgreSQL cluster in the team
folder (Debian's `postgresql` binaries; started as the `postgres` user when run as root, since
PostgreSQL refuses to run as root), a role with a generated password (kept in the team folder,
mode 0600) and one database per tool, and applies each tool's own schema migrations (`prefect
server database upgrade`, `mlflow db upgrade`; both are no-ops when the schema is current). Then it
starts PostgreSQL, the Prefect server and the MLflow tracking server, which serves artifacts from
the shared folder (`--artifacts-destination`: clients upload and download through the server and
need no access to the folder), all bound to 127.0.0.1 unless SIGPIPE_TEAM_HOST names another
address, and makes the shared folder's `dvc-remote` this repository's default DVC remote. In a
clone of the project (a `prefect.yaml`), it also deploys the pipeline to the server (`prefect
deploy --all`, work pool `signature-pool`) and starts a process worker for it, which runs the
stages with MLFLOW_TRACKING_URI set to the team's server. `make team-down` stops the worker first
(so it shuts down while its server still answers), then the servers, then PostgreSQL; the
databases stay in the team folder, so the next `team-up` finds every run, model version and flow
run again.

Settings come from the environment (defaults in TeamSettings): SIGPIPE_TEAM_DIR (databases,
logs, pid files), SIGPIPE_TEAM_SHARED (artifacts and DVC remote; a shared mount in real use),
SIGPIPE_TEAM_HOST, SIGPIPE_POSTGRES_PORT, PREFECT_PORT, MLFLOW_PORT.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import typer

from tasks.errors import ConfigError
from tasks.files import write_private_file
from tasks.lifeline import is_alive, stop_process_group

DEFAULT_TEAM_DIR = ".team"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_POSTGRES_PORT = 5433
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
ROLE = "sigpipe"
DATABASES = ("prefect", "mlflow")
POSTGRES_USER = "postgres"  # the system user Debian's package creates; PostgreSQL will not run as root
POSTGRES_VERSION_FILE = "PG_VERSION"
PASSWORD_BYTES = 24
STARTUP_SECONDS = 120
POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 15
COMMAND_TIMEOUT_SECONDS = 300
ERROR_LINES = 3  # the end of a failed command's output (a traceback's last lines name the cause)
DEBIAN_POSTGRES_BIN = Path("/usr/lib/postgresql")
DVC_REMOTE_NAME = "team"
# Stopped in this order, before PostgreSQL: a Prefect worker whose server is gone hangs in its
# graceful shutdown, so the worker goes first.
SERVERS = ("worker", "mlflow", "prefect")
# How often the worker asks the server for scheduled runs, unless the user set it: a deployment run starts
# within 2 s instead of Prefect's default 10 (one request to a server on the team's network each time).
WORKER_QUERY_SECONDS = "2"
WORK_POOL = "signature-pool"  # prefect.yaml's deployments run on this process work pool
DEPLOYMENT_FILE = "prefect.yaml"
DEPLOYMENT = "signature-pipeline/local"  # what `prefect deployment run` starts

app = typer.Typer(help="PostgreSQL-backed Prefect and MLflow servers and a shared DVC remote.", no_args_is_help=True)


@dataclass(frozen=True)
class TeamSettings:
    """Where the team services keep their state and where they listen."""

    root: Path  # the repository (its DVC config gets the remote)
    team_dir: Path
    shared_dir: Path
    host: str
    postgres_port: int
    prefect_port: int
    mlflow_port: int

    @classmethod
    def from_environment(cls, root: Path, environment: Mapping[str, str]) -> TeamSettings:
        """Settings from SIGPIPE_TEAM_* and the port variables, with this repository's defaults."""
        team_dir = Path(environment.get("SIGPIPE_TEAM_DIR", root / DEFAULT_TEAM_DIR)).resolve()
        return cls(
            root=root.resolve(),
            team_dir=team_dir,
            shared_dir=Path(environment.get("SIGPIPE_TEAM_SHARED", team_dir / "shared")).resolve(),
            host=environment.get("SIGPIPE_TEAM_HOST", DEFAULT_HOST),
            postgres_port=int(environment.get("SIGPIPE_POSTGRES_PORT", DEFAULT_POSTGRES_PORT)),
            prefect_port=int(environment.get("PREFECT_PORT", DEFAULT_PREFECT_PORT)),
            mlflow_port=int(environment.get("MLFLOW_PORT", DEFAULT_MLFLOW_PORT)),
        )

    @property
    def postgres_dir(self) -> Path:
        return self.team_dir / "postgres"

    @property
    def run_dir(self) -> Path:
        """Pid files, logs and PostgreSQL's socket."""
        return self.team_dir / "run"

    @property
    def password_file(self) -> Path:
        return self.team_dir / "postgres.password"

    @property
    def artifacts_dir(self) -> Path:
        return self.shared_dir / "mlflow-artifacts"

    @property
    def dvc_remote_dir(self) -> Path:
        return self.shared_dir / "dvc-remote"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    def database_url(self, database: str, driver: str = "postgresql", with_password: bool = True) -> str:
        """The SQLAlchemy URL of one of the team's databases (password from the team folder). Without
        the password, for a command line (`ps` shows it): libpq then reads PGPASSWORD."""
        credentials = ROLE
        if with_password:
            credentials += ":" + quote(self.password(), safe="")
        return f"{driver}://{credentials}@{self.host}:{self.postgres_port}/{database}"

    def password(self) -> str:
        """The role's generated password (the team folder's file, mode 0600)."""
        return self.password_file.read_text().strip()


def postgres_bin_dir() -> Path:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl, postgres): Debian keeps them out
    of PATH, under /usr/lib/postgresql/<version>/bin (the newest is used)."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent
    candidates = sorted(DEBIAN_POSTGRES_BIN.glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    if not candidates:
        raise ConfigError(
            "PostgreSQL's server programs were not found (initdb): install them (Debian: apt-get install "
            "postgresql) or put their folder on PATH"
        )
    return candidates[-1].parent


def as_postgres(command: Sequence[str]) -> list[str]:
    """`command` run as the `postgres` system user when this process is root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return list(command)
    return ["runuser", "-u", POSTGRES_USER, "--", *command]


def run(
    command: Sequence[str], environment: Mapping[str, str] | None = None, what: str = "", cwd: Path = Path("/")
) -> str:
    """Run `command` in `cwd`, returning its stdout; a failure raises ConfigError with its output and
    `what` it did. The default folder, `/`, is one every user (the postgres user too) may enter."""
    result = subprocess.run(
        list(command),
        cwd=cwd,
        env=dict(environment) if environment is not None else None,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        last_lines = (result.stderr or result.stdout).strip().splitlines()[-ERROR_LINES:]
        raise ConfigError(f"{what or command[0]} failed (exit {result.returncode}): {' | '.join(last_lines)}")
    return result.stdout


def give_to_postgres(path: Path) -> None:
    """As root, hand `path` to the postgres user (the server writes there); otherwise nothing to do."""
    if os.geteuid() == 0:
        shutil.chown(path, user=POSTGRES_USER, group=POSTGRES_USER)


def check_reachable_by_postgres(folder: Path) -> None:
    """As root, the postgres user must be able to enter `folder` (every folder above it too)."""
    if os.geteuid() != 0:
        return
    reachable = subprocess.run(as_postgres(["test", "-x", str(folder)]), cwd="/", timeout=COMMAND_TIMEOUT_SECONDS)
    if reachable.returncode != 0:
        raise ConfigError(
            f"{folder}: the {POSTGRES_USER} user cannot enter this folder (or one above it), and PostgreSQL runs "
            "as that user: set SIGPIPE_TEAM_DIR to a folder it can reach (every parent at least mode 711)"
        )


def create_cluster(settings: TeamSettings) -> None:
    """The PostgreSQL cluster, the first time: password authentication everywhere, one role."""
    if (settings.postgres_dir / POSTGRES_VERSION_FILE).is_file():
        return
    settings.team_dir.mkdir(parents=True, exist_ok=True)
    check_reachable_by_postgres(settings.team_dir)
    if not settings.password_file.exists():
        write_private_file(settings.password_file, secrets.token_urlsafe(PASSWORD_BYTES) + "\n")
    settings.postgres_dir.mkdir(mode=0o700, exist_ok=True)
    give_to_postgres(settings.postgres_dir)
    # initdb reads the password from a file the postgres user can read: a private copy, removed after.
    password_copy = settings.postgres_dir.parent / ".initdb-password"
    password_copy.unlink(missing_ok=True)
    write_private_file(password_copy, settings.password_file.read_text())
    give_to_postgres(password_copy)
    try:
        run(
            as_postgres(
                [
                    str(postgres_bin_dir() / "initdb"),
                    "--pgdata",
                    str(settings.postgres_dir),
                    "--username",
                    ROLE,
                    "--pwfile",
                    str(password_copy),
                    "--auth",
                    "scram-sha-256",
                    "--encoding",
                    "UTF8",
                ]
            ),
            what="initdb (creating the PostgreSQL cluster)",
        )
    finally:
        password_copy.unlink(missing_ok=True)


def postgres_running(settings: TeamSettings) -> bool:
    """Whether the team's PostgreSQL server is running (`pg_ctl status`)."""
    status = subprocess.run(
        as_postgres([str(postgres_bin_dir() / "pg_ctl"), "status", "--pgdata", str(settings.postgres_dir)]),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    return status.returncode == 0


def start_postgres(settings: TeamSettings) -> None:
    """Start PostgreSQL on the team's host and port (waits until it accepts connections)."""
    if postgres_running(settings):
        return
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    give_to_postgres(settings.run_dir)
    options = f"-c listen_addresses={settings.host} -p {settings.postgres_port} -k {settings.run_dir}"
    run(
        as_postgres(
            [
                str(postgres_bin_dir() / "pg_ctl"),
                "start",
                "--wait",
                "--pgdata",
                str(settings.postgres_dir),
                "--log",
                str(settings.run_dir / "postgres.log"),
                "-o",
                options,
            ]
        ),
        what=f"starting PostgreSQL (log: {settings.run_dir / 'postgres.log'})",
    )


def stop_postgres(settings: TeamSettings) -> bool:
    """Stop PostgreSQL (fast shutdown: open sessions are ended, data is kept); True when it ran."""
    if not (settings.postgres_dir / POSTGRES_VERSION_FILE).is_file() or not postgres_running(settings):
        return False
    pg_ctl = str(postgres_bin_dir() / "pg_ctl")
    run(
        as_postgres([pg_ctl, "stop", "--wait", "--mode", "fast", "--pgdata", str(settings.postgres_dir)]),
        what="stopping PostgreSQL",
    )
    return True


def create_databases(settings: TeamSettings) -> None:
    """One database per tool, owned by the team's role (kept when they exist)."""
    environment = {**os.environ, "PGPASSWORD": settings.password()}
    connection = ["--host", settings.host, "--port", str(settings.postgres_port), "--username", ROLE]
    query = "SELECT datname FROM pg_database"
    existing = set(run(["psql", *connection, "--dbname", "postgres", "-tAc", query], environment).split())
    for database in DATABASES:
        if database not in existing:
            run(["createdb", *connection, database], environment, what=f"creating database {database}")


def migrate(settings: TeamSettings) -> None:
    """Each tool's own schema migrations on its database."""
    prefect_environment = {
        **os.environ,
        "PREFECT_API_DATABASE_CONNECTION_URL": settings.database_url("prefect", "postgresql+asyncpg"),
    }
    run([tool("prefect"), "server", "database", "upgrade", "--yes"], prefect_environment, what="Prefect's migrations")
    # `mlflow db upgrade` takes the URL as an argument: given without the password, which libpq reads
    # from the environment.
    mlflow_environment = {**os.environ, "PGPASSWORD": settings.password()}
    mlflow_command = [tool("mlflow"), "db", "upgrade", settings.database_url("mlflow", with_password=False)]
    run(mlflow_command, mlflow_environment, what="MLflow's migrations")


def tool(name: str) -> str:
    """A console script of this environment (prefect, mlflow, dvc): beside this interpreter."""
    return str(Path(sys.executable).parent / name)


def pid_file(settings: TeamSettings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def running_pid(settings: TeamSettings, name: str) -> int | None:
    """The pid of a server this module started, when it is still running."""
    path = pid_file(settings, name)
    if not path.is_file():
        return None
    pid = int(path.read_text().strip())
    return pid if is_alive(pid) else None


def start_server(settings: TeamSettings, name: str, command: Sequence[str], environment: Mapping[str, str]) -> None:
    """Start a server in the background (its own session, log in the run folder) unless it runs."""
    if running_pid(settings, name) is not None:
        return
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with (settings.run_dir / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            list(command), env=dict(environment), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    pid_file(settings, name).write_text(f"{process.pid}\n")


def wait_until_healthy(url: str, name: str, log: Path) -> None:
    """Poll `url` until it answers 200; a server that never does is named with its log."""
    import requests

    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=POLL_SECONDS).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(POLL_SECONDS)
    raise ConfigError(f"the {name} server did not answer {url} within {STARTUP_SECONDS} s: see {log}")


def start_servers(settings: TeamSettings) -> None:
    """The Prefect server and the MLflow tracking server on the team's databases."""
    prefect_environment = {
        **os.environ,
        "PREFECT_API_DATABASE_CONNECTION_URL": settings.database_url("prefect", "postgresql+asyncpg"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    prefect_command = [tool("prefect"), "server", "start"]
    prefect_command += ["--host", settings.host, "--port", str(settings.prefect_port)]
    start_server(settings, "prefect", prefect_command, prefect_environment)
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    # The store's URL (with its password) goes through the environment, not the command line `ps` shows.
    mlflow_environment = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": settings.database_url("mlflow"),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    mlflow_command = [
        tool("mlflow"),
        "server",
        "--artifacts-destination",
        str(settings.artifacts_dir),
        "--serve-artifacts",
        "--host",
        settings.host,
        "--port",
        str(settings.mlflow_port),
        "--workers",
        "1",
    ]
    start_server(settings, "mlflow", mlflow_command, mlflow_environment)
    wait_until_healthy(f"{settings.prefect_api_url}/health", "Prefect", settings.run_dir / "prefect.log")
    wait_until_healthy(f"{settings.mlflow_url}/health", "MLflow", settings.run_dir / "mlflow.log")


def clients_environment(settings: TeamSettings) -> dict[str, str]:
    """This environment pointed at the team's servers, as a user's shell after the README's `export`."""
    return {**os.environ, "PREFECT_API_URL": settings.prefect_api_url, "MLFLOW_TRACKING_URI": settings.mlflow_url}


def deploy_and_start_worker(settings: TeamSettings) -> bool:
    """In a clone of the project: the work pool, the deployments of prefect.yaml (`prefect deploy --all`,
    log in the run folder: its "start a worker" hint is done here) and a process worker that runs them
    with the team's servers. False where the repository has no prefect.yaml."""
    if not (settings.root / DEPLOYMENT_FILE).is_file():
        return False
    environment = clients_environment(settings)
    # Created once: a pool the team has since configured (a concurrency limit) is kept as it is.
    inspected = subprocess.run(
        [tool("prefect"), "work-pool", "inspect", WORK_POOL],
        env=environment,
        cwd=settings.root,
        capture_output=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    if inspected.returncode != 0:
        create_pool = [
            tool("prefect"),
            "work-pool",
            "create",
            WORK_POOL,
            "--type",
            "process",
            "--base-job-template",  # a run request changes no command, folder or environment (README)
            "flows/work_pool.json",
        ]
        run(create_pool, environment, what="prefect work-pool create", cwd=settings.root)
    deployed = run(
        [tool("prefect"), "--no-prompt", "deploy", "--all"],
        {**environment, "SIGPIPE_ROOT": str(settings.root)},
        what="prefect deploy --all",
        cwd=settings.root,
    )
    (settings.run_dir / "deploy.log").write_text(deployed)
    start_server(
        settings, "worker", [tool("prefect"), "worker", "start", "--pool", WORK_POOL], worker_environment(environment)
    )
    return True


def worker_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: `environment`, with the query interval WORKER_QUERY_SECONDS unless set."""
    return {"PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS, **environment}


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


def stop_server(settings: TeamSettings, name: str) -> bool:
    """TERM a server this module started (its whole process group), KILL it after a grace period."""
    pid = running_pid(settings, name)
    pid_file(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    stop_process_group(pid, STOP_GRACE_SECONDS)
    return True


def team_up(settings: TeamSettings) -> None:
    """Create what is missing, start everything, and point DVC at the shared remote."""
    create_cluster(settings)
    start_postgres(settings)
    create_databases(settings)
    migrate(settings)
    start_servers(settings)
    add_dvc_remote(settings)
    deploy_and_start_worker(settings)


def team_down(settings: TeamSettings) -> list[str]:
    """Stop the worker, the servers, then PostgreSQL; the names of what was running."""
    stopped = [name for name in SERVERS if stop_server(settings, name)]
    if stop_postgres(settings):
        stopped.append("postgres")
    return stopped


def settings_here() -> TeamSettings:
    return TeamSettings.from_environment(Path.cwd(), os.environ)


@app.command()
def up() -> None:
    """Start PostgreSQL, the Prefect server and the MLflow server (created the first time), and in a
    clone of the project the deployment's worker."""
    settings = settings_here()
    try:
        team_up(settings)
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(f"PostgreSQL: {settings.host}:{settings.postgres_port} (data in {settings.postgres_dir})")
    typer.echo(f"Prefect:    {settings.prefect_api_url}   MLflow: {settings.mlflow_url}   logs: {settings.run_dir}")
    typer.echo(f"Artifacts:  {settings.artifacts_dir} (served by MLflow)   DVC remote: {settings.dvc_remote_dir}")
    if running_pid(settings, "worker") is not None:
        typer.echo(
            f"Worker:     pool '{WORK_POOL}', deployment '{DEPLOYMENT}' (more: prefect worker start --pool {WORK_POOL})"
        )
    exports = f"PREFECT_API_URL={settings.prefect_api_url} MLFLOW_TRACKING_URI={settings.mlflow_url}"
    typer.echo(f"Use them:   export {exports}")


@app.command()
def down() -> None:
    """Stop the servers and PostgreSQL; the databases are kept for the next `up`."""
    stopped = team_down(settings_here())
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


if __name__ == "__main__":
    app()

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

Credentials: the first `up` generates them into the team folder (credentials.json, mode 0600 from
creation) and every later `up` reuses them. The Prefect server requires HTTP basic auth
(PREFECT_SERVER_API_AUTH_STRING); the MLflow server runs MLflow's basic-auth app (its users,
permissions and an admin in the PostgreSQL database `mlflow_auth`) with the team's account
`sigpipe`, which the worker, its stage processes and the team's clients use. Secrets reach the
servers and the worker through their environment or a private file, never a command line;
`python -m flows.team env` prints the `export` lines a team member's shell evaluates.

Model signing: the first `up` creates the team's key pair (tasks/signing.py): the private key in the
team folder, given to the worker alone (SIGPIPE_SIGNING_KEY: its register stages sign with it), the
public key in the shared folder, which `env` names in SIGPIPE_VERIFY_KEY for every client.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from tasks.errors import ConfigError
from tasks.files import write_private_file
from tasks.lifeline import is_alive, stop_process_group
from tasks.signing import SIGNING_KEY_VARIABLE, VERIFY_KEY_VARIABLE, KeyFiles, ensure_signing_key

DEFAULT_TEAM_DIR = ".team"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_POSTGRES_PORT = 5433
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
ROLE = "sigpipe"
AUTH_DATABASE = "mlflow_auth"  # MLflow's basic-auth app: users, passwords (hashed) and permissions
DATABASES = ("prefect", "mlflow", AUTH_DATABASE)
CREDENTIALS_FILE = "credentials.json"
SIGNING_KEY_FILE = "model-signing.key"  # in the team folder, mode 0600 (tasks/signing.py)
VERIFY_KEY_FILE = "model-signing.pub"  # in the shared folder: what every client checks versions with
MLFLOW_AUTH_CONFIG_FILE = "mlflow-auth.ini"
# The one account of the team's pipeline and members, on both servers (Prefect's basic auth has one).
TEAM_USER = "sigpipe"
MLFLOW_ADMIN = "admin"  # manages MLflow's users and permissions; no client needs it
MLFLOW_AUTH_APP = "basic-auth"
AUTHORIZATION_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"
# What an MLflow account may do with an experiment or model no one granted it: nothing. The team's
# account owns (MANAGE) what it creates, and the admin grants more to any account it adds (a
# read-only one for a dashboard sees nothing until granted, instead of every run and model file).
MLFLOW_DEFAULT_PERMISSION = "NO_PERMISSIONS"
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
ENV_HINT = 'eval "$(python -m flows.team env)"'
OPERATOR_ENV_HINT = 'eval "$(python -m flows.team env --operator)"'
PREFECT_AUTH_VARIABLE = "PREFECT_API_AUTH_STRING"
# `make up` (one user, 127.0.0.1): its credentials, as `export` lines its recipe and the user's shell
# read, and MLflow's auth configuration (users in a SQLite file beside them; the user is MLflow's admin).
DEFAULT_RUN_DIR = ".run"
LOCAL_CREDENTIALS_FILE = "credentials.env"
LOCAL_AUTH_DATABASE_FILE = "mlflow-auth.db"
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
    def credentials_file(self) -> Path:
        """The servers' and clients' generated credentials (mode 0600)."""
        return self.team_dir / CREDENTIALS_FILE

    @property
    def mlflow_auth_config(self) -> Path:
        """MLflow's basic-auth configuration (admin and auth database; mode 0600), rewritten at each up."""
        return self.team_dir / MLFLOW_AUTH_CONFIG_FILE

    @property
    def signing_key_files(self) -> KeyFiles:
        """The team's model signing key pair: the private key in the team folder (the worker's
        register stage signs with it), the public key in the shared folder (every client trusts it)."""
        return KeyFiles(private=self.team_dir / SIGNING_KEY_FILE, public=self.shared_dir / VERIFY_KEY_FILE)

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


@dataclass(frozen=True)
class TeamCredentials:
    """The generated secrets of the team's servers: the team account's passwords on Prefect and on
    MLflow, MLflow's admin password and the key MLflow's auth app signs its forms with."""

    prefect_password: str
    mlflow_password: str
    mlflow_admin_password: str
    flask_secret_key: str

    @classmethod
    def generate(cls) -> TeamCredentials:
        """Fresh random secrets (URL-safe: no `:` to end Prefect's user name early, nothing to quote)."""
        return cls(*(secrets.token_urlsafe(PASSWORD_BYTES) for _ in range(4)))

    @classmethod
    def load(cls, path: Path) -> TeamCredentials:
        """The credentials written by `ensure_credentials`."""
        return cls(**json.loads(path.read_text()))

    @property
    def prefect_auth_string(self) -> str:
        """Prefect's basic-auth `user:password`, as its server and clients are given it."""
        return f"{TEAM_USER}:{self.prefect_password}"

    def client_variables(self) -> dict[str, str]:
        """The environment variables with which Prefect's and MLflow's clients authenticate."""
        return {
            PREFECT_AUTH_VARIABLE: self.prefect_auth_string,
            "MLFLOW_TRACKING_USERNAME": TEAM_USER,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_password,
        }


def ensure_credentials(settings: TeamSettings) -> TeamCredentials:
    """The team's credentials: generated into the team folder the first time (mode 0600 from
    creation), read from there afterwards."""
    if not settings.credentials_file.exists():
        settings.team_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(TeamCredentials.generate().__dict__, indent=2) + "\n"
        write_private_file(settings.credentials_file, text)
    return TeamCredentials.load(settings.credentials_file)


def write_mlflow_auth_config(settings: TeamSettings, credentials: TeamCredentials) -> None:
    """MLflow's basic-auth configuration (MLFLOW_AUTH_CONFIG_PATH), written anew at each up (the
    database's port may have changed), private from creation: it holds the admin's and the
    database's passwords. `%` is doubled: MLflow reads the file with configparser's interpolation."""
    values = {
        "default_permission": MLFLOW_DEFAULT_PERMISSION,
        "database_uri": settings.database_url(AUTH_DATABASE),
        "admin_username": MLFLOW_ADMIN,
        "admin_password": credentials.mlflow_admin_password,
        "authorization_function": AUTHORIZATION_FUNCTION,
    }
    write_ini(settings.mlflow_auth_config, values)


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


def write_ini(path: Path, values: Mapping[str, str]) -> None:
    """MLflow's auth configuration file: section [mlflow], written anew, private from creation.
    `%` is doubled: MLflow reads the file with configparser's interpolation."""
    lines = ["[mlflow]", *(f"{key} = {value.replace('%', '%%')}" for key, value in values.items())]
    path.unlink(missing_ok=True)
    write_private_file(path, "\n".join(lines) + "\n")


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


def start_servers(settings: TeamSettings, credentials: TeamCredentials) -> None:
    """The Prefect server and the MLflow tracking server on the team's databases, each requiring
    the team's credentials (secrets in their environment and MLflow's private auth file)."""
    prefect_environment = {
        **os.environ,
        "PREFECT_API_DATABASE_CONNECTION_URL": settings.database_url("prefect", "postgresql+asyncpg"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_AUTH_STRING": credentials.prefect_auth_string,
    }
    prefect_command = [tool("prefect"), "server", "start"]
    prefect_command += ["--host", settings.host, "--port", str(settings.prefect_port)]
    start_server(settings, "prefect", prefect_command, prefect_environment)
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    write_mlflow_auth_config(settings, credentials)
    # The store's URL (with its password) goes through the environment, not the command line `ps` shows.
    mlflow_environment = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": settings.database_url("mlflow"),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_AUTH_CONFIG_PATH": str(settings.mlflow_auth_config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": credentials.flask_secret_key,
    }
    mlflow_command = [
        tool("mlflow"),
        "server",
        "--app-name",
        MLFLOW_AUTH_APP,
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


def clients_environment(settings: TeamSettings, credentials: TeamCredentials) -> dict[str, str]:
    """This environment pointed at the team's servers with the team's credentials, as a user's shell
    after `eval "$(python -m flows.team env)"`."""
    return {**os.environ, **client_exports(settings, credentials, operator=True)}


def client_exports(settings: TeamSettings, credentials: TeamCredentials, operator: bool = False) -> dict[str, str]:
    """The variables a client of the team's servers needs: their URLs, the team's MLflow account and the
    public key that model versions must be signed with (tasks/signing.py); for an `operator`, also the
    Prefect credential. Prefect's server auth has one account, and whoever holds it can change a
    deployment or the work pool and so run code on the worker, which holds the signing key: it is an
    operator's credential, not a team member's."""
    urls = {"PREFECT_API_URL": settings.prefect_api_url, "MLFLOW_TRACKING_URI": settings.mlflow_url}
    trusted = {VERIFY_KEY_VARIABLE: str(settings.signing_key_files.public)}
    variables = credentials.client_variables()
    if not operator:
        variables.pop(PREFECT_AUTH_VARIABLE)
    return {**urls, **variables, **trusted}


def deploy_and_start_worker(settings: TeamSettings, credentials: TeamCredentials) -> bool:
    """In a clone of the project: the work pool, the deployments of prefect.yaml (`prefect deploy --all`,
    log in the run folder: its "start a worker" hint is done here) and a process worker that runs them
    with the team's servers. False where the repository has no prefect.yaml."""
    if not (settings.root / DEPLOYMENT_FILE).is_file():
        return False
    environment = clients_environment(settings, credentials)
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
    # The worker's register stages sign with the team's key (the only process given the private half).
    signing = {**environment, SIGNING_KEY_VARIABLE: str(settings.signing_key_files.private)}
    start_server(
        settings, "worker", [tool("prefect"), "worker", "start", "--pool", WORK_POOL], worker_environment(signing)
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
    credentials = ensure_credentials(settings)
    settings.shared_dir.mkdir(parents=True, exist_ok=True)
    ensure_signing_key(settings.signing_key_files)  # before any client needs the public half
    start_servers(settings, credentials)
    ensure_team_account(settings, credentials)
    add_dvc_remote(settings)
    deploy_and_start_worker(settings, credentials)


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
    `eval "$(python -m flows.team env)"` (nothing else is printed: the output holds passwords)."""
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
    stopped = team_down(settings_here())
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


if __name__ == "__main__":
    app()

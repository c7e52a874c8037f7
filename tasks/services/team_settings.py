"""Where the team services (`make team-up`, tasks/services/team_servers.py) keep their state and listen, and
their generated credentials.

Settings come from the environment (defaults in TeamSettings): SIGPIPE_TEAM_DIR (databases,
logs, pid files), SIGPIPE_TEAM_SHARED (artifacts and DVC remote; a shared mount in real use),
SIGPIPE_TEAM_HOST, SIGPIPE_POSTGRES_PORT, PREFECT_PORT, MLFLOW_PORT.

Credentials: the first `up` generates them into the team folder (credentials.json, mode 0600 from
creation) and every later `up` reuses them. The Prefect server requires HTTP basic auth
(PREFECT_SERVER_API_AUTH_STRING); the MLflow server runs MLflow's basic-auth app (its users,
permissions and an admin in the PostgreSQL database `mlflow_auth`) with the team's account
`sigpipe`, which the worker, its stage processes and the team's clients use. Secrets reach the
servers and the worker through their environment or a private file, never a command line;
`python -m tasks.services.team env` prints the `export` lines a team member's shell evaluates.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tasks.registration.signing import VERIFY_KEY_VARIABLE, KeyFiles
from tasks.workspace.files import write_private_file

DEFAULT_TEAM_DIR = ".team"
LOCAL_HOST = "127.0.0.1"
DEFAULT_HOST = LOCAL_HOST
DEFAULT_POSTGRES_PORT = 5433
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
ROLE = "sigpipe"
AUTH_DATABASE = "mlflow_auth"  # MLflow's basic-auth app: users, passwords (hashed) and permissions
CREDENTIALS_FILE = "credentials.json"
SIGNING_KEY_FILE = "model-signing.key"  # in the team folder, mode 0600 (tasks/registration/signing.py)
VERIFY_KEY_FILE = "model-signing.pub"  # in the shared folder: what every client checks versions with
MLFLOW_AUTH_CONFIG_FILE = "mlflow-auth.ini"
# The one account of the team's pipeline and members, on both servers (Prefect's basic auth has one).
TEAM_USER = "sigpipe"
MLFLOW_ADMIN = "admin"  # manages MLflow's users and permissions; no client needs it
AUTHORIZATION_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"
# What an MLflow account may do with an experiment or model no one granted it: nothing. The team's
# account owns (MANAGE) what it creates, and the admin grants more to any account it adds (a
# read-only one for a dashboard sees nothing until granted, instead of every run and model file).
MLFLOW_DEFAULT_PERMISSION = "NO_PERMISSIONS"
PREFECT_AUTH_VARIABLE = "PREFECT_API_AUTH_STRING"
PASSWORD_BYTES = 24
# What only the servers read: their auth (Prefect's server side, MLflow's auth app and its admin) and
# their stores' URLs with passwords. No worker, stage, model server or other client is given them.
SERVER_SECRET_VARIABLES = frozenset(
    {
        "PREFECT_SERVER_API_AUTH_STRING",
        "PREFECT_API_DATABASE_CONNECTION_URL",
        "MLFLOW_AUTH_CONFIG_PATH",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_BACKEND_STORE_URI",
    }
)


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


def write_ini(path: Path, values: Mapping[str, str]) -> None:
    """MLflow's auth configuration file: section [mlflow], written anew, private from creation.
    `%` is doubled: MLflow reads the file with configparser's interpolation."""
    lines = ["[mlflow]", *(f"{key} = {value.replace('%', '%%')}" for key, value in values.items())]
    path.unlink(missing_ok=True)
    write_private_file(path, "\n".join(lines) + "\n")


def without_server_secrets(environment: Mapping[str, str]) -> dict[str, str]:
    """`environment` without the servers' secrets (SERVER_SECRET_VARIABLES): the base of every process
    the services start, to which each server adds its own."""
    return {name: value for name, value in environment.items() if name not in SERVER_SECRET_VARIABLES}


def clients_environment(settings: TeamSettings, credentials: TeamCredentials) -> dict[str, str]:
    """This environment, without the servers' secrets, pointed at the team's servers with the team's
    (not the admin's) credentials, as a user's shell after `eval "$(python -m tasks.services.team env --operator)"`."""
    return {**without_server_secrets(os.environ), **client_exports(settings, credentials, operator=True)}


def client_exports(settings: TeamSettings, credentials: TeamCredentials, operator: bool = False) -> dict[str, str]:
    """The variables a client of the team's servers needs: their URLs, the team's MLflow account and the
    public key that model versions must be signed with (tasks/registration/signing.py); for an `operator`, also the
    Prefect credential. Prefect's server auth has one account, and whoever holds it can change a
    deployment or the work pool and so run code on the worker, which holds the signing key: it is an
    operator's credential, not a team member's."""
    urls = {"PREFECT_API_URL": settings.prefect_api_url, "MLFLOW_TRACKING_URI": settings.mlflow_url}
    trusted = {VERIFY_KEY_VARIABLE: str(settings.signing_key_files.public)}
    variables = credentials.client_variables()
    if not operator:
        variables.pop(PREFECT_AUTH_VARIABLE)
    return {**urls, **variables, **trusted}

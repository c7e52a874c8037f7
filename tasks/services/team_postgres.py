"""The team's PostgreSQL cluster (Debian's `postgresql` binaries): created the first time in the team
folder with one role (a generated password, mode 0600) and one database per tool, started and stopped
with `pg_ctl` (which supervises PostgreSQL itself: it waits for the server and knows its pid), as the
`postgres` user when run as root (PostgreSQL refuses root), and each tool's own schema migrations.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tasks.services.commands import COMMAND_TIMEOUT_SECONDS, run, tool
from tasks.services.team_settings import AUTH_DATABASE, PASSWORD_BYTES, ROLE, TeamSettings
from tasks.workspace.errors import ConfigError
from tasks.workspace.files import write_private_file

DATABASES = ("prefect", "mlflow", AUTH_DATABASE)
POSTGRES_USER = "postgres"  # the system user Debian's package creates; PostgreSQL will not run as root
POSTGRES_VERSION_FILE = "PG_VERSION"
DEBIAN_POSTGRES_BIN = Path("/usr/lib/postgresql")


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
    """Each tool's own schema migrations on its database, both at once (two databases, each tool's
    migrations seconds of its own CPU); an error of either is raised once both have finished."""
    prefect_environment = {
        **os.environ,
        "PREFECT_API_DATABASE_CONNECTION_URL": settings.database_url("prefect", "postgresql+asyncpg"),
    }
    prefect_command = [tool("prefect"), "server", "database", "upgrade", "--yes"]
    # `mlflow db upgrade` takes the URL as an argument: given without the password, which libpq reads
    # from the environment.
    mlflow_environment = {**os.environ, "PGPASSWORD": settings.password()}
    mlflow_command = [tool("mlflow"), "db", "upgrade", settings.database_url("mlflow", with_password=False)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = [
            pool.submit(run, prefect_command, prefect_environment, "Prefect's migrations"),
            pool.submit(run, mlflow_command, mlflow_environment, "MLflow's migrations"),
        ]
    for outcome in outcomes:
        outcome.result()

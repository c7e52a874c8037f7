"""Where `make team-up` keeps its state and listens, from the environment (no service started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.services import team_postgres, team_servers
from tasks.services.team_settings import TeamSettings
from tasks.workspace.errors import ConfigError


def test_defaults_keep_everything_in_the_workspace_on_the_loopback(tmp_path: Path) -> None:
    settings = TeamSettings.from_environment(tmp_path, {})
    assert settings.team_dir == tmp_path / ".team" and settings.shared_dir == tmp_path / ".team" / "shared"
    assert settings.host == "127.0.0.1"
    assert settings.prefect_api_url == "http://127.0.0.1:4200/api" and settings.mlflow_url == "http://127.0.0.1:5000"
    assert settings.dvc_remote_dir == tmp_path / ".team" / "shared" / "dvc-remote"


def test_the_environment_moves_folders_and_ports(tmp_path: Path) -> None:
    environment = {
        "SIGPIPE_TEAM_DIR": str(tmp_path / "state"),
        "SIGPIPE_TEAM_SHARED": str(tmp_path / "mount"),
        "SIGPIPE_POSTGRES_PORT": "6543",
        "PREFECT_PORT": "4300",
        "MLFLOW_PORT": "5100",
    }
    settings = TeamSettings.from_environment(tmp_path, environment)
    assert settings.postgres_dir == tmp_path / "state" / "postgres"
    assert settings.artifacts_dir == tmp_path / "mount" / "mlflow-artifacts"
    assert (settings.postgres_port, settings.prefect_port, settings.mlflow_port) == (6543, 4300, 5100)


def test_database_urls_carry_the_generated_password_escaped(tmp_path: Path) -> None:
    settings = TeamSettings.from_environment(tmp_path, {"SIGPIPE_POSTGRES_PORT": "6543"})
    settings.team_dir.mkdir()
    settings.password_file.write_text("a/b@c:d\n")
    assert settings.database_url("mlflow") == "postgresql://sigpipe:a%2Fb%40c%3Ad@127.0.0.1:6543/mlflow"
    assert settings.database_url("prefect", "postgresql+asyncpg").startswith("postgresql+asyncpg://sigpipe:")
    # For a command line (`mlflow db upgrade`): no password, which libpq then reads from PGPASSWORD.
    assert settings.database_url("mlflow", with_password=False) == "postgresql://sigpipe@127.0.0.1:6543/mlflow"


def test_missing_postgresql_programs_name_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(team_postgres, "DEBIAN_POSTGRES_BIN", tmp_path / "no-postgresql")
    with pytest.raises(ConfigError, match="apt-get install postgresql"):
        team_postgres.postgres_bin_dir()


def test_down_with_nothing_started_stops_nothing(tmp_path: Path) -> None:
    assert team_servers.team_down(TeamSettings.from_environment(tmp_path, {})) == []


def test_the_worker_asks_for_runs_every_two_seconds_unless_the_user_said_otherwise() -> None:
    """A deployment run then starts within 2 s, not within Prefect's default 10."""
    assert team_servers.worker_environment({"PATH": "/bin"}) == {"PATH": "/bin", "PREFECT_WORKER_QUERY_SECONDS": "2"}
    chosen = team_servers.worker_environment({"PREFECT_WORKER_QUERY_SECONDS": "30"})
    assert chosen["PREFECT_WORKER_QUERY_SECONDS"] == "30"

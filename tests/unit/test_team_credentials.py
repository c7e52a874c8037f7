"""The team's generated credentials and what is derived from them (no service started here)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tasks.services import local_services, team, team_settings
from tasks.services.team_settings import TeamCredentials, TeamSettings

PRIVATE_MODE = 0o600


def settings_in(tmp_path: Path) -> TeamSettings:
    return TeamSettings.from_environment(tmp_path, {"SIGPIPE_POSTGRES_PORT": "6543"})


def test_credentials_are_generated_once_private_from_creation_and_reused(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    first = team_settings.ensure_credentials(settings)
    assert settings.credentials_file.stat().st_mode & 0o777 == PRIVATE_MODE
    assert team_settings.ensure_credentials(settings) == first  # read back, not generated again
    secrets = (first.prefect_password, first.mlflow_password, first.mlflow_admin_password, first.flask_secret_key)
    assert len(set(secrets)) == len(secrets) and all(len(secret) >= 12 for secret in secrets)
    assert first.prefect_auth_string == f"sigpipe:{first.prefect_password}"


def test_clients_get_the_urls_and_the_team_account(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    credentials = TeamCredentials("p", "m", "a", "k")
    # A team member gets no Prefect credential: it changes deployments, so it runs code on the worker.
    member = team_settings.client_exports(settings, credentials)
    assert "PREFECT_API_AUTH_STRING" not in member
    assert team_settings.client_exports(settings, credentials, operator=True) == {
        **member,
        "PREFECT_API_AUTH_STRING": "sigpipe:p",
    }
    assert member == {
        "PREFECT_API_URL": "http://127.0.0.1:4200/api",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "MLFLOW_TRACKING_USERNAME": "sigpipe",
        "MLFLOW_TRACKING_PASSWORD": "m",
        # Clients trust the team's model-signing key, published in the shared folder.
        "SIGPIPE_VERIFY_KEY": str(tmp_path / ".team" / "shared" / "model-signing.pub"),
    }


def test_mlflow_auth_config_is_private_and_read_back_as_written(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    settings.team_dir.mkdir()
    settings.password_file.write_text("db%pass\n")
    credentials = TeamCredentials("p", "m", "admin%secret", "k")
    team_settings.write_mlflow_auth_config(settings, credentials)
    team_settings.write_mlflow_auth_config(settings, credentials)  # rewritten at each up
    assert settings.mlflow_auth_config.stat().st_mode & 0o777 == PRIVATE_MODE
    parser = configparser.ConfigParser()  # as MLflow reads it (interpolation on)
    parser.read(settings.mlflow_auth_config)
    section = parser["mlflow"]
    assert section["admin_password"] == "admin%secret" and section["admin_username"] == "admin"
    assert section["default_permission"] == "NO_PERMISSIONS"
    assert section["database_uri"] == "postgresql://sigpipe:db%25pass@127.0.0.1:6543/mlflow_auth"


def test_env_prints_export_lines_for_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIGPIPE_TEAM_DIR", raising=False)
    runner = CliRunner()
    missing = runner.invoke(team.app, ["env"])
    assert missing.exit_code == 1 and "make team-up" in missing.output
    credentials = team_settings.ensure_credentials(TeamSettings.from_environment(tmp_path, {}))
    printed = runner.invoke(team.app, ["env"])
    assert printed.exit_code == 0
    exports = dict(shlex.split(line)[1].split("=", 1) for line in printed.output.splitlines())
    assert exports["MLFLOW_TRACKING_PASSWORD"] == credentials.mlflow_password
    assert "PREFECT_API_AUTH_STRING" not in exports
    operator = runner.invoke(team.app, ["env", "--operator"])
    operator_exports = dict(shlex.split(line)[1].split("=", 1) for line in operator.output.splitlines())
    assert operator_exports["PREFECT_API_AUTH_STRING"] == credentials.prefect_auth_string


def test_make_ups_credentials_file_is_private_sourceable_and_reused(tmp_path: Path) -> None:
    run_dir = tmp_path / ".run"
    credentials_file = local_services.ensure_local_credentials(run_dir)
    assert credentials_file == run_dir / "credentials.env"
    assert credentials_file.stat().st_mode & 0o777 == PRIVATE_MODE
    written = credentials_file.read_text()
    assert local_services.ensure_local_credentials(run_dir).read_text() == written  # reused, not generated again
    exports = dict(shlex.split(line)[1].split("=", 1) for line in written.splitlines() if line.startswith("export "))
    assert exports["PREFECT_SERVER_API_AUTH_STRING"] == exports["PREFECT_API_AUTH_STRING"]
    assert exports["MLFLOW_TRACKING_PASSWORD"] == exports["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert exports["MLFLOW_AUTH_CONFIG_PATH"] == str(run_dir / "mlflow-auth.ini")
    parser = configparser.ConfigParser()
    parser.read(exports["MLFLOW_AUTH_CONFIG_PATH"])
    assert parser["mlflow"]["database_uri"] == f"sqlite:///{run_dir / 'mlflow-auth.db'}"
    assert exports["MLFLOW_AUTH_ADMIN_PASSWORD"] not in Path(exports["MLFLOW_AUTH_CONFIG_PATH"]).read_text()


def test_make_ups_processes_get_only_the_secrets_each_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker (whose deployment runs execute any flow code) and the model server see no server-side
    secret, even started from a shell that sourced credentials.env; each server sees only its own."""
    credentials = local_services.sourced_variables(local_services.ensure_local_credentials(tmp_path))
    for name, value in credentials.items():  # a user's shell after `source .run/credentials.env`
        monkeypatch.setenv(name, value)
    environments = local_services.service_environments(credentials, "http://127.0.0.1:4200/api")
    admin_password = credentials["MLFLOW_AUTH_ADMIN_PASSWORD"]
    prefect_server_auth = credentials["PREFECT_SERVER_API_AUTH_STRING"]
    for name in ("worker", "deploy", "scorer"):
        environment = environments[name]
        assert not team_settings.SERVER_SECRET_VARIABLES & environment.keys(), name
        assert admin_password not in environment.values(), name
        assert credentials["MLFLOW_FLASK_SERVER_SECRET_KEY"] not in environment.values(), name
    assert environments["worker"]["PREFECT_API_AUTH_STRING"] == credentials["PREFECT_API_AUTH_STRING"]
    assert "PREFECT_API_AUTH_STRING" not in environments["scorer"]
    assert environments["prefect-server"]["PREFECT_SERVER_API_AUTH_STRING"] == prefect_server_auth
    assert admin_password not in environments["prefect-server"].values()
    mlflow = environments["mlflow"]
    assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] == admin_password
    assert mlflow["MLFLOW_FLASK_SERVER_SECRET_KEY"] == credentials["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert "PREFECT_SERVER_API_AUTH_STRING" not in mlflow and "PREFECT_API_AUTH_STRING" not in mlflow


def test_the_team_worker_gets_no_server_secret_from_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_in(tmp_path)
    credentials = team_settings.ensure_credentials(settings)
    for name in team_settings.SERVER_SECRET_VARIABLES:
        monkeypatch.setenv(name, "server-side-secret")
    environment = team_settings.clients_environment(settings, credentials)
    assert not team_settings.SERVER_SECRET_VARIABLES & environment.keys()
    assert environment["MLFLOW_TRACKING_USERNAME"] == team_settings.TEAM_USER  # the team's account, not the admin
    assert credentials.mlflow_admin_password not in environment.values()

"""`sigpipe serve` on an alias waits for its first version only while the model or the alias does not
exist yet (a real SQLite store); any other registry error ends the wait with that error named (a real
HTTP server on 127.0.0.1 that is not MLflow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from mlflow.tracking import MlflowClient

from tasks.cli.model_loading import alias_has_version
from tests.support.http_server import LocalHTTPServer

MODEL_URI = "models:/waited@champion"


def test_an_alias_has_a_version_only_once_its_model_and_alias_exist(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    assert not alias_has_version(MODEL_URI, store)  # no registered model yet
    client.create_registered_model("waited")
    assert not alias_has_version(MODEL_URI, store)  # the model, but no alias yet
    version = client.create_model_version("waited", source=tmp_path.as_uri())
    client.set_registered_model_alias("waited", "champion", version.version)
    assert alias_has_version(MODEL_URI, store)
    assert alias_has_version("models:/waited/1", store)  # no alias to wait for


def test_another_registry_error_ends_the_wait_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with LocalHTTPServer({}) as server, pytest.raises(typer.Exit) as raised:
        alias_has_version(MODEL_URI, server.url(""))
    assert raised.value.exit_code == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {MODEL_URI} cannot be read from the registry") and "404" in error


WAITER = """
import sys
import typer
from tasks.cli.model_loading import wait_for_a_version
try:
    wait_for_a_version(sys.argv[1], 0.1, sys.argv[2])
except typer.Exit as ended:
    raise SystemExit(ended.exit_code)
"""


def test_ctrl_c_ends_the_wait_without_a_traceback(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from tests.conftest import PROJECT_ROOT

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    waiter = subprocess.Popen(
        [sys.executable, "-c", WAITER, MODEL_URI, store],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiter.stdout is not None
        first = waiter.stdout.readline()  # printed once the wait has begun
        assert first.startswith(f"no model version is {MODEL_URI} yet: waiting for one"), first
        waiter.send_signal(signal.SIGINT)
        rest, errors = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, errors
    assert f"stopped while waiting for {MODEL_URI}" in rest
    assert "Traceback" not in errors

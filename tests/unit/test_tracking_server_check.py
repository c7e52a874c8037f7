"""A stage that logs to a tracking server asks it first whether it is up (a real HTTP server here)."""

from __future__ import annotations

import pytest

from tasks.tracking import server as tracking_server
from tasks.tracking.server import check_tracking_server, lost_server_reason, tracking_server_loss_explained
from tasks.workspace.errors import ConfigError, TrackingServerLostError
from tests.support.http_server import LocalHTTPServer
from tests.support.model_server import free_port


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking_server, "HEALTH_RETRY_SECONDS", 0.0)


def test_a_server_that_answers_its_health_check_passes() -> None:
    with LocalHTTPServer({"/health": b"OK"}) as server:
        check_tracking_server(server.url(""))
        assert len(server.requests_for("/health")) == 1


def test_a_server_restarting_is_asked_again() -> None:
    with LocalHTTPServer({"/health": b"OK"}) as server:
        server.fail("/health", times=2, status=503)
        check_tracking_server(server.url(""))
        assert len(server.requests_for("/health")) == 3


def test_a_server_that_stays_down_is_named_with_the_fix() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match="does not answer") as raised:
        check_tracking_server(uri)
    assert (
        uri in str(raised.value)
        and "make team-up" in str(raised.value)
        and "unset MLFLOW_TRACKING_URI" in str(raised.value)
    )


def test_a_store_that_is_not_a_server_is_not_checked() -> None:
    check_tracking_server("sqlite:////nonexistent/mlflow.db")  # no request, no error


def test_every_stage_checks_the_server_before_it_logs(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """`ensure_experiment`, which train, evaluate, calibrate and register call before any run starts."""
    from tasks.tracking.runs import ensure_experiment
    from tasks.workspace.paths import ProjectPaths

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError, match="does not answer"):
        ensure_experiment(ProjectPaths.from_root(tmp_path), "signature-pipeline")


@pytest.fixture
def lost_server_error(monkeypatch: pytest.MonkeyPatch) -> Exception:
    """The error MLflow's client raises when its server is gone (a real request to a dead port)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(MlflowException) as raised:
        client.get_experiment_by_name("anything")
    return raised.value


def test_a_lost_server_is_told_from_other_failures(lost_server_error: Exception) -> None:
    import requests
    from mlflow.exceptions import MlflowException

    from tasks.workspace.errors import DownloadError

    assert lost_server_reason(lost_server_error) == "ConnectionError"
    assert lost_server_reason(MlflowException("RESOURCE_DOES_NOT_EXIST: no such model")) is None
    try:  # a dataset download's connection error is not the tracking server's
        raise DownloadError("https://example.org/data.zip: cut") from requests.ConnectionError("reset")
    except DownloadError as download_error:
        assert lost_server_reason(download_error) is None
    first, second = MlflowException("first"), MlflowException("second")
    first.__context__, second.__context__ = second, first  # a cycle ends the walk
    assert lost_server_reason(first) is None


def test_a_stage_that_loses_its_server_says_so_in_one_error(
    lost_server_error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingServerLostError) as raised, tracking_server_loss_explained("train"):
        raise lost_server_error
    assert str(raised.value).startswith(f"the MLflow tracking server {uri} stopped answering during the train stage")
    assert "(ConnectionError after 0 retries, MLFLOW_HTTP_REQUEST_MAX_RETRIES)" in str(raised.value)
    # A workspace's own store (no server) is not reported as a lost server: the error stays as it was.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/mlflow.db")
    with pytest.raises(type(lost_server_error)), tracking_server_loss_explained("train"):
        raise lost_server_error

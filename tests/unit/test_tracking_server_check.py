"""A stage that logs to a tracking server asks it first whether it is up (a real HTTP server here)."""

from __future__ import annotations

import pytest

from tasks import tracking_server
from tasks.errors import ConfigError
from tasks.tracking_server import check_tracking_server
from tests.integration.test_pipeline_flows import free_port
from tests.support.http_server import LocalHTTPServer


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
    from tasks.paths import ProjectPaths
    from tasks.tracking import ensure_experiment

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError, match="does not answer"):
        ensure_experiment(ProjectPaths.from_root(tmp_path), "signature-pipeline")

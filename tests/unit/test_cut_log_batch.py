"""An epoch's metrics are sent again when the tracking server dies while answering (a cut answer), and
only then: a real HTTP server on 127.0.0.1 that cuts its first answers, and a real SQLite store that
keeps one point when the same batch arrives twice (why resending is safe)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks.tracking.epochs import CUT_RESPONSE_ATTEMPTS, log_batch_resent_when_cut
from tasks.tracking.server import response_was_cut

LOG_BATCH_PATH = "/api/2.0/mlflow/runs/log-batch"
PROMISED_BYTES = 100  # the Content-Length a cut answer announces; it sends 2 bytes, then closes
METRICS = [Metric("loss", 0.5, 1_700_000_000_000, 3), Metric("accuracy", 0.75, 1_700_000_000_000, 3)]


class CuttingServer(ThreadingHTTPServer):
    """Answers log-batch requests: the first `cuts` answers are cut off mid-body, the later ones are `{}`."""

    daemon_threads = True

    def __init__(self, cuts: int) -> None:
        super().__init__(("127.0.0.1", 0), CuttingHandler)
        self.cuts = cuts
        self.bodies: list[bytes] = []


class CuttingHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        server = self.server
        assert isinstance(server, CuttingServer)
        server.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if len(server.bodies) <= server.cuts:
            self.send_header("Content-Length", str(PROMISED_BYTES))
            self.end_headers()
            self.wfile.write(b"{}")
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


@contextmanager
def cutting_server(cuts: int) -> Iterator[CuttingServer]:
    server = CuttingServer(cuts)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def client_of(server: CuttingServer) -> MlflowClient:
    host, port = server.server_address[:2]
    return MlflowClient(tracking_uri=f"http://{host}:{port}")


def test_a_cut_answer_is_resent_with_the_same_metrics() -> None:
    with cutting_server(cuts=1) as server:
        log_batch_resent_when_cut(client_of(server), "run", METRICS)
    assert len(server.bodies) == 2 and server.bodies[0] == server.bodies[1]  # timestamps included


def test_answers_cut_every_time_give_up_after_the_last_attempt() -> None:
    with cutting_server(cuts=CUT_RESPONSE_ATTEMPTS) as server, pytest.raises(MlflowException) as raised:
        log_batch_resent_when_cut(client_of(server), "run", METRICS)
    assert response_was_cut(raised.value)
    assert len(server.bodies) == CUT_RESPONSE_ATTEMPTS


def test_a_server_that_is_away_is_not_a_cut_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with cutting_server(cuts=0) as server:
        client = client_of(server)
    with pytest.raises(MlflowException) as raised:  # the server is shut: connection refused
        log_batch_resent_when_cut(client, "run", METRICS)
    assert not response_was_cut(raised.value)
    assert server.bodies == []


def test_the_same_batch_twice_is_stored_once(tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("cut"))
    client.log_batch(run.info.run_id, metrics=METRICS)
    client.log_batch(run.info.run_id, metrics=METRICS)
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(3, 0.5)]

"""`sigpipe serve` follows the champion without a restart (issue 26, point 4).

Real server processes on 127.0.0.1 serve the tiny signed model of a real MLflow store, following the
alias every second. The test process registers and signs versions and moves the alias as `register`
does (`record_alias`), or by hand, and watches what the server answers and logs: a moved champion is
served within a few polls while a request that started before the swap is answered by the version it
started with; an alias moved by hand to an unsigned version, or by register to a version whose stored
file was changed afterwards, is refused, logged, and the old version goes on answering; a server
started on an explicit version does not move.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tasks.scoring.model_server import INVOCATIONS_PATH, MODEL_VERSION_HEADER, VERSION_PATH
from tasks.workspace.paths import ProjectPaths
from tests.support.model_server import LOOPBACK, served_model
from tests.support.registered_model import (
    SIGNATURE_NAME,
    move_alias,
    register_version,
    registered_workspace,
    stored_artifact,
)

pytestmark = pytest.mark.slow

MODEL_NAME = "followed-test"
CALIBRATION = {"classes": ["a", "b", "c"], "temperature": 1.0, "threshold": 0.0, "unknown_class_id": 3}
FOLLOW_SECONDS = 1
STARTUP_SECONDS = 120
SWAP_SECONDS = 60  # a poll, then the new version's checks and load, on a busy 2-core machine
BODY_SECONDS = 2 * SWAP_SECONDS  # a request's body may wait for a whole swap
STILL_SECONDS = 5 * FOLLOW_SECONDS  # polls an unmoving server is given to (wrongly) move
WAIT_STEP_SECONDS = 0.2
REQUEST_SECONDS = 60
FORGED_THRESHOLD = -1.0  # a calibration changed to accept every claim


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> ProjectPaths:
    return registered_workspace(tmp_path_factory.mktemp("followed"), MODEL_NAME, CALIBRATION)


@pytest.fixture(autouse=True)
def tracking(workspace: ProjectPaths) -> None:
    """This process registers and moves aliases in the workspace's store (another test may point elsewhere)."""
    import mlflow

    mlflow.set_tracking_uri(workspace.mlflow_tracking_uri)


@pytest.fixture(scope="module")
def server(workspace: ProjectPaths) -> Iterator[tuple[str, Path]]:
    """`sigpipe serve` of the champion, following it every second; yields its URL and log file."""
    log = workspace.root / "serve.log"
    arguments = ["--follow-seconds", str(FOLLOW_SECONDS), "--body-seconds", str(BODY_SECONDS)]
    with served_model(workspace.root, log, STARTUP_SECONDS, [*arguments, "-p", str(workspace.params_file)]) as (
        url,
        _,
    ):
        yield url, log


def served_version(url: str) -> str:
    return str(requests.get(url + VERSION_PATH, timeout=REQUEST_SECONDS).json()["version"])


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Seconds until `condition` held (polled), or a failure naming `what`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            pytest.fail(f"not within {seconds} s: {what}")
        time.sleep(WAIT_STEP_SECONDS)
    return time.monotonic() - started


def request_body(workspace: ProjectPaths) -> bytes:
    image = base64.b64encode((workspace.root / SIGNATURE_NAME).read_bytes()).decode()
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[image]]}}).encode()


def invoke(url: str, workspace: ProjectPaths) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    return requests.post(url + INVOCATIONS_PATH, data=request_body(workspace), headers=headers, timeout=REQUEST_SECONDS)


def answered_by(url: str, workspace: ProjectPaths) -> tuple[str, str]:
    """(the JSON's version, the header's version) of an answer to the test image."""
    response = invoke(url, workspace)
    assert response.status_code == 200, response.text
    return str(response.json()["version"]), response.headers[MODEL_VERSION_HEADER].rsplit("/", 1)[1]


def started_request(url: str, body: bytes) -> socket.socket:
    """A POST /invocations whose headers and first half of the body are sent: the request has started."""
    port = int(url.rsplit(":", 1)[1])
    connection = socket.create_connection((LOOPBACK, port), timeout=REQUEST_SECONDS)
    head = (
        f"POST {INVOCATIONS_PATH} HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    connection.sendall(head.encode() + body[: len(body) // 2])
    return connection


def finished_request(connection: socket.socket, body: bytes) -> tuple[str, dict[str, str], dict[str, object]]:
    """The rest of the body sent; the reply's status line, headers and JSON (the server closes after it)."""
    connection.sendall(body[len(body) // 2 :])
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    connection.close()
    head, _, content = b"".join(chunks).decode().partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    return status, headers, json.loads(content)


def test_a_moved_champion_is_served_without_a_restart_and_a_request_in_flight_keeps_its_version(
    server: tuple[str, Path], workspace: ProjectPaths
) -> None:
    url, log = server
    before = served_version(url)
    body = request_body(workspace)
    in_flight = started_request(url, body)
    try:
        new = register_version(workspace, MODEL_NAME)
        move_alias(workspace, MODEL_NAME, new)  # as register does: the alias and its signed statement
        seconds = wait_until(lambda: served_version(url) == new, SWAP_SECONDS, f"the server serves version {new}")
        status, headers, answer = finished_request(in_flight, body)
    finally:
        in_flight.close()
    assert " 200 " in status, (status, answer)
    assert (answer["version"], headers[MODEL_VERSION_HEADER.lower()]) == (before, f"{MODEL_NAME}/{before}")
    assert answered_by(url, workspace) == (new, new)
    assert f"now serving {MODEL_NAME} version {new} (was version {before})" in log.read_text()
    print(f"version {new} served {seconds:.1f} s after the alias moved (polls every {FOLLOW_SECONDS} s)")


def test_a_champion_moved_by_hand_or_to_a_changed_version_is_refused_and_the_old_one_answers(
    server: tuple[str, Path], workspace: ProjectPaths
) -> None:
    url, log = server
    before = served_version(url)
    unsigned = register_version(workspace, MODEL_NAME, signed=False)
    move_alias(workspace, MODEL_NAME, unsigned, by_register=False)
    refused = f"models:/{MODEL_NAME}@champion now names version {unsigned}, which is refused, so version {before}"
    wait_until(lambda: refused in log.read_text(), SWAP_SECONDS, f"the refusal of version {unsigned} is logged")
    (line,) = [line for line in log.read_text().splitlines() if refused in line]
    assert f"{MODEL_NAME} version {unsigned} is not signed by the register stage" in line
    assert answered_by(url, workspace) == (before, before)

    changed = register_version(workspace, MODEL_NAME)
    calibration = stored_artifact(MODEL_NAME, changed, "calibration.json")
    calibration.write_text(json.dumps({**CALIBRATION, "threshold": FORGED_THRESHOLD}))  # after register signed it
    move_alias(workspace, MODEL_NAME, changed)
    refused = f"now names version {changed}, which is refused, so version {before} is still served"
    digest_refusal = "artifacts/calibration.json differs from the one the register stage signed"
    wait_until(lambda: digest_refusal in log.read_text(), SWAP_SECONDS, f"the refusal of version {changed} is logged")
    # A poll between move_alias's two steps (the alias, then its signed statement) may refuse the version
    # once more for the statement; once its fingerprint is stable, later polls neither load nor log it again.
    logged = log.read_text().count(refused)
    time.sleep(STILL_SECONDS)
    assert log.read_text().count(refused) == logged
    assert answered_by(url, workspace) == (before, before) and served_version(url) == before


def test_a_server_on_an_explicit_version_does_not_move(workspace: ProjectPaths) -> None:
    log = workspace.root / "serve-explicit.log"
    arguments = ["--model", f"models:/{MODEL_NAME}/1", "--follow-seconds", str(FOLLOW_SECONDS)]
    with served_model(workspace.root, log, STARTUP_SECONDS, [*arguments, "-p", str(workspace.params_file)]) as (
        url,
        _,
    ):
        new = register_version(workspace, MODEL_NAME)
        move_alias(workspace, MODEL_NAME, new)
        time.sleep(STILL_SECONDS)
        assert answered_by(url, workspace) == ("1", "1") and served_version(url) == "1"
    assert "champion follower" not in log.read_text()


def test_a_server_started_before_any_champion_waits_for_the_first_one(workspace: ProjectPaths) -> None:
    """`make up` starts the model server before any pipeline run: it says it waits, keeps running, and
    serves the first champion registered, without a restart."""
    import subprocess
    import sys

    import mlflow

    from tests.support.model_server import free_port

    name = "first-champion-test"
    mlflow.create_experiment(name, artifact_location=(workspace.mlruns_dir / "artifacts").as_uri())
    port, log = free_port(), workspace.root / "serve-waiting.log"
    url = f"http://{LOOPBACK}:{port}"
    arguments = ["--model", f"models:/{name}@champion", "--follow-seconds", str(FOLLOW_SECONDS)]
    command = [sys.executable, "-m", "tasks.cli.app", "serve", "--port", str(port), *arguments]
    with log.open("w") as output:
        process = subprocess.Popen(
            [*command, "-p", str(workspace.params_file)], cwd=workspace.root, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: "waiting for one" in log.read_text(), STARTUP_SECONDS, "the server saying it waits")
        time.sleep(STILL_SECONDS)
        assert process.poll() is None, log.read_text()
        version = register_version(workspace, name)
        move_alias(workspace, name, version)

        def answers() -> bool:
            try:
                return requests.get(url + VERSION_PATH, timeout=REQUEST_SECONDS).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(answers, STARTUP_SECONDS + SWAP_SECONDS, "the first champion served")
        assert served_version(url) == version and answered_by(url, workspace) == (version, version)
    finally:
        process.terminate()
        process.wait(timeout=SWAP_SECONDS)

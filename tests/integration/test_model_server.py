"""`sigpipe serve` protects itself: body size, concurrency, one-line errors (issue 27, point 4).

A real server process on 127.0.0.1 serves a tiny signed model whose per-image limit is 1 MiB, so
its body limit is about 1.4 MiB. The attacks of the issue: a 256 MiB body (refused before it is
read), a stream that passes the limit, 30 concurrent large requests (answered or shed with 503
while the server's peak memory stays within the bound the module states), malformed bodies (one
line, no traceback, no path, the right column list).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from tasks.scoring.model_server import FRAMING_BYTES, INVOCATIONS_PATH, ServerLimits
from tasks.scoring.request_body import MAX_ROWS
from tasks.workspace.paths import ProjectPaths
from tests.support.model_server import served_model
from tests.support.registered_model import SIGNATURE_NAME, registered_workspace
from tests.unit.test_inference import SETTINGS

pytestmark = pytest.mark.slow

MODEL_NAME = "served-test"
CALIBRATION = {"classes": ["a", "b", "c"], "temperature": 1.0, "threshold": 0.0, "unknown_class_id": 3}
MAX_IMAGE_BYTES = 1 << 20
MAX_PIXELS = 1_000_000
SERVED_SETTINGS = replace(SETTINGS, max_image_bytes=MAX_IMAGE_BYTES, max_pixels=MAX_PIXELS)
LIMITS = ServerLimits.from_settings(SERVED_SETTINGS)
HUGE_BODY_BYTES = 256 << 20
CONCURRENT_REQUESTS = 30
STARTUP_SECONDS = 120
REQUEST_SECONDS = 120
MEBIBYTE = 1 << 20
BODY_SECONDS = 3.0  # the served test model's body timeout (the default, 60 s, would make a slow test)
# What the server may add to its peak resident memory while under attack: the bound the module states
# (ServerLimits.memory_bound), plus allocator and thread slack.
SLACK_BYTES = 64 * MEBIBYTE
MEMORY_BOUND_BYTES = LIMITS.memory_bound + SLACK_BYTES
# Below the body limit: base64 of (limit - framing) * 3/4 random bytes, a "large" request the server reads.
LARGE_IMAGE_BYTES = (LIMITS.max_body_bytes - FRAMING_BYTES) * 3 // 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, ProjectPaths]]:
    """`sigpipe serve` of the signed tiny model; yields its URL, its process id and the workspace."""
    workspace = registered_workspace(tmp_path_factory.mktemp("served"), MODEL_NAME, CALIBRATION, SERVED_SETTINGS)
    arguments = ["--body-seconds", str(BODY_SECONDS), "-p", str(workspace.params_file)]
    with served_model(workspace.root, workspace.root / "serve.log", STARTUP_SECONDS, arguments) as (url, process):
        yield url, process.pid, workspace


def memory_bytes(pid: int, field: str) -> int:
    """A memory figure of /proc/<pid>/status (VmRSS: now, VmHWM: the peak so far), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def received_until_closed(connection: socket.socket) -> bytes:
    """Every byte the server sends until it closes the connection (it does after a refusal)."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def invoke(url: str, columns: list[str], rows: list[list[object]]) -> requests.Response:
    body = {"dataframe_split": {"columns": columns, "data": rows}}
    return requests.post(url + INVOCATIONS_PATH, json=body, timeout=REQUEST_SECONDS)


def assert_one_line_error(response: requests.Response, status: int) -> str:
    """The response is `status` with one line of JSON naming no path and carrying no traceback."""
    assert response.status_code == status, response.text[:500]
    message = response.json()["message"]
    assert "\n" not in message and "Traceback" not in response.text and "site-packages" not in response.text
    return message


def test_an_image_is_answered_with_the_model_version(server: tuple[str, int, ProjectPaths]) -> None:
    url, _, workspace = server
    image = base64.b64encode((workspace.root / SIGNATURE_NAME).read_bytes()).decode()
    response = invoke(url, ["image", "claimed_writer"], [[image, "a"]])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["model"], answer["version"]) == (MODEL_NAME, "1")
    assert response.headers["X-Model-Version"] == f"{MODEL_NAME}/1"
    (row,) = answer["predictions"]
    assert row["error"] == "" and row["claimed_writer"] == "a" and isinstance(row["claim_accepted"], bool)
    assert requests.get(f"{url}/version", timeout=10).json() == {"model": MODEL_NAME, "version": "1"}


def test_a_256_mib_body_is_refused_before_it_is_read(server: tuple[str, int, ProjectPaths]) -> None:
    """Only the headers and 1 KiB are sent: the 413 comes from the declared length alone."""
    url, pid, _ = server
    before = memory_bytes(pid, "VmRSS")
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_SECONDS) as connection:
        head = (
            f"POST {INVOCATIONS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {HUGE_BODY_BYTES}\r\n\r\n"
        )
        connection.sendall(head.encode() + b"{" + b" " * 1023)
        reply = received_until_closed(connection).decode(errors="replace")
    status_line, _, rest = reply.partition("\r\n")
    assert " 413 " in status_line, reply[:500]
    assert "above this server's limit" in rest
    assert memory_bytes(pid, "VmRSS") - before < 16 * MEBIBYTE


def test_a_client_that_sends_its_body_slowly_loses_its_place(server: tuple[str, int, ProjectPaths]) -> None:
    """Slow clients holding every active place (slowloris) are answered 408 after the body timeout, and
    the server answers others again."""
    url, _, workspace = server
    port = int(url.rsplit(":", 1)[1])
    head = (
        f"POST {INVOCATIONS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{"
    )
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=REQUEST_SECONDS) for _ in range(LIMITS.max_active)]
    try:
        for connection in stalled:
            connection.sendall(head.encode())  # and nothing more
        time.sleep(BODY_SECONDS / 3)
        assert invoke(url, ["image"], [["aGVsbG8="]]).status_code == 503  # every place is held
        replies = [received_until_closed(connection).decode(errors="replace") for connection in stalled]
    finally:
        for connection in stalled:
            connection.close()
    assert all(" 408 " in reply.partition("\r\n")[0] and "did not arrive within" in reply for reply in replies)
    image = base64.b64encode((workspace.root / SIGNATURE_NAME).read_bytes()).decode()
    assert invoke(url, ["image"], [[image]]).status_code == 200


def test_a_stream_past_the_limit_is_cut_off(server: tuple[str, int, ProjectPaths]) -> None:
    """A chunked body (no declared length) is refused once it passes the limit, not read to its end."""
    url, _, _ = server
    chunk = b" " * MEBIBYTE
    sent = []

    def body() -> Iterator[bytes]:
        yield b'{"dataframe_split": '
        for _ in range(HUGE_BODY_BYTES // MEBIBYTE):
            sent.append(len(chunk))
            yield chunk

    try:
        response = requests.post(
            url + INVOCATIONS_PATH, data=body(), headers={"Content-Type": "application/json"}, timeout=REQUEST_SECONDS
        )
        assert_one_line_error(response, 413)
    except requests.ConnectionError:
        pass  # the server closed the connection on a client still sending: refused as well
    assert sum(sent) < HUGE_BODY_BYTES
    assert requests.get(f"{url}/ping", timeout=10).status_code == 200


def test_thirty_concurrent_large_requests_are_answered_or_shed_within_the_memory_bound(
    server: tuple[str, int, ProjectPaths],
) -> None:
    url, pid, _ = server
    image = base64.b64encode(os.urandom(LARGE_IMAGE_BYTES)).decode()
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the present size
    before = memory_bytes(pid, "VmRSS")
    with ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS) as pool:
        responses = list(pool.map(lambda _: invoke(url, ["image"], [[image]]), range(CONCURRENT_REQUESTS)))
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert "busy" in assert_one_line_error(response, 503) and response.headers["Retry-After"]
        else:
            (row,) = response.json()["predictions"]
            assert row["error"]  # random bytes are no image: answered as an error row, not a failure
    growth = memory_bytes(pid, "VmHWM") - before
    assert growth <= MEMORY_BOUND_BYTES, f"peak grew {growth / MEBIBYTE:.0f} MiB"


def test_bad_requests_get_one_line_400s_naming_the_columns(server: tuple[str, int, ProjectPaths]) -> None:
    url, _, _ = server
    wrong = assert_one_line_error(invoke(url, ["img"], [["aGVsbG8="]]), 400)
    assert "the input has the columns ['img']" in wrong and "'image'" in wrong and "unknown: ['img']" in wrong
    not_json = requests.post(
        url + INVOCATIONS_PATH, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert "not JSON" in assert_one_line_error(not_json, 400)
    csv = requests.post(url + INVOCATIONS_PATH, data=b"image\n1\n", headers={"Content-Type": "text/csv"}, timeout=30)
    assert "application/json" in assert_one_line_error(csv, 415)
    ragged = requests.post(url + INVOCATIONS_PATH, json={"dataframe_split": {"columns": ["image"], "data": [[]]}})
    assert "one value per column" in assert_one_line_error(ragged, 400)
    shapeless = requests.post(url + INVOCATIONS_PATH, json={"inputs": [1, 2]}, timeout=30)
    assert "dataframe_split" in assert_one_line_error(shapeless, 400)


def test_a_request_of_many_tiny_rows_is_refused(server: tuple[str, int, ProjectPaths]) -> None:
    """Rows cost far more memory parsed than as bytes: more than MAX_ROWS images is a 413."""
    url, _, _ = server
    message = assert_one_line_error(invoke(url, ["image"], [["aGVsbG8="]] * (MAX_ROWS + 1)), 413)
    assert f"this server takes {MAX_ROWS} at most" in message
    assert invoke(url, ["image"], [["aGVsbG8="]] * MAX_ROWS).status_code == 200


def test_paths_are_refused_per_row_without_looking_at_the_file(server: tuple[str, int, ProjectPaths]) -> None:
    url, _, workspace = server
    rows = invoke(url, ["path"], [[str(workspace.root / SIGNATURE_NAME)], ["/no/such/file.png"]]).json()["predictions"]
    assert rows[0]["error"].split(": ", 1)[1] == rows[1]["error"].split(": ", 1)[1]
    assert "not accepted" in rows[0]["error"] and rows[0]["writer"] == ""
    assert json.dumps(rows).count("signature.png") == 0

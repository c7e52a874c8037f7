"""`sigpipe serve` run by a test: a free port, the server process, and a clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

LOOPBACK = "127.0.0.1"
POLL_SECONDS = 0.2
STOP_SECONDS = 60


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@contextmanager
def served_model(
    workspace: Path, log: Path, startup_seconds: float, arguments: Sequence[str] = ()
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`sigpipe serve` of `workspace`'s champion (plus `arguments`) on a free port, its output in `log`;
    yields its URL and process once /ping answers. Afterwards it is stopped with SIGTERM, which must
    end it (uvicorn stops gracefully, then exits by the signal it caught) and free the port."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "tasks.cli.app", "serve", "--port", str(port), *arguments]
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=workspace, env=environment, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + startup_seconds
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(POLL_SECONDS)
        else:
            state = "exited" if process.poll() is not None else "is still starting"
            tail = log.read_text()[-2000:]
            pytest.fail(f"sigpipe serve did not answer /ping within {startup_seconds} s (it {state}): {tail}")
        yield url, process
    finally:
        process.terminate()
        code = process.wait(timeout=STOP_SECONDS)
    assert code in (0, -signal.SIGTERM), log.read_text()[-2000:]
    with socket.socket() as probe:
        assert probe.connect_ex((LOOPBACK, port)) != 0, log.read_text()[-2000:]

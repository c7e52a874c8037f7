"""A Prefect API for the pipeline flow's run when none is configured: Prefect's own server, API only.

With no `PREFECT_API_URL`, Prefect would start a temporary server inside the flow's process on its
first API call and stop it only from `atexit`, so a `kill -9` of the pipeline would leave it
listening. Instead the pipeline's entry point starts `prefect server start --no-services --no-ui`
(Prefect's public command) on a free local port, as a child that a watcher ends if this process dies
(`tasks.lifeline.guard_children`), waits for its health endpoint (tenacity), and points this
process's Prefect settings at it for the run (`prefect.settings.temporary_settings`). Its runs are
stored in the workspace's Prefect home, like any other.
"""

from __future__ import annotations

import atexit
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tasks.lifeline import guard_children, stop_processes

LOCAL_HOST = "127.0.0.1"
HEALTH_POLL_SECONDS = 0.5
HEALTH_REQUEST_SECONDS = 2.0


@dataclass(frozen=True)
class TemporaryApi:
    """The server this run uses: its API address and its process."""

    url: str
    pid: int


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCAL_HOST, 0))
        return int(probe.getsockname()[1])


def answers(api_url: str) -> bool:
    """Whether the Prefect API at `api_url` answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=HEALTH_REQUEST_SECONDS) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until_healthy(api_url: str, process: subprocess.Popen[bytes], timeout_seconds: float) -> None:
    """Poll the health endpoint until it answers; a server that exits or stays silent past the timeout
    is an error naming the setting that sets the timeout."""
    from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"`prefect server start` exited with code {process.returncode} before answering")
        return answers(api_url)

    polls = Retrying(
        retry=retry_if_result(lambda ok: not ok),
        stop=stop_after_delay(timeout_seconds),
        wait=wait_fixed(HEALTH_POLL_SECONDS),
    )
    try:
        polls(healthy)
    except RetryError:
        raise RuntimeError(
            f"Prefect's server at {api_url} did not answer within {timeout_seconds:.0f} s: raise "
            "server.ephemeral.startup_timeout_seconds in prefect.toml, or set PREFECT_API_URL to a running server"
        ) from None


@contextmanager
def prefect_api_for_this_run() -> Iterator[TemporaryApi | None]:
    """The configured Prefect API (yields None), or a guarded temporary server for the length of the
    block (yields it); with temporary servers turned off (PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false),
    None and Prefect's own behaviour."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        yield None
        return
    port = free_port()
    api_url = f"http://{LOCAL_HOST}:{port}/api"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", LOCAL_HOST, "--port", str(port)]
    command += ["--no-services", "--no-ui", "--analytics-off"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    guard_children([process.pid])
    # Stopped at exit, after Prefect's own exit hooks (registered later, so run earlier) have sent the
    # run's last logs and events to it; the watcher stops it if this process is killed.
    atexit.register(stop_processes, [process.pid])
    try:
        wait_until_healthy(api_url, process, float(settings.server.ephemeral.startup_timeout_seconds))
    except BaseException:
        stop_processes([process.pid])
        raise
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield TemporaryApi(api_url, process.pid)

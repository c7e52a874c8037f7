"""A Prefect API for the pipeline flow's run when none is configured: Prefect's own server, API only.

With no `PREFECT_API_URL`, Prefect would start a temporary server inside the flow's process on its
first API call and stop it only from `atexit`, so a `kill -9` of the pipeline would leave it
listening. Instead the pipeline's entry point starts `prefect server start --no-services --no-ui`
(Prefect's public command) on a free local port, as a child that a watcher ends if this process dies
(`tasks.services.supervisor`: start, guard, health wait with tenacity, stop), and points this
process's Prefect settings at it for the run (`prefect.settings.temporary_settings`). Its runs are
stored in the workspace's Prefect home, like any other.

Flow-run heartbeats are off against that server: they exist so that a server can mark a run whose
process died as crashed, and this server runs without its services and dies with the run. Each flow
run would otherwise wait for its heartbeat thread's one-second sleep to end when it finishes (up to
a second per stage subflow, issue 25); a configured API keeps Prefect's heartbeats.
"""

from __future__ import annotations

import atexit
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tasks.runtime.processes import stop_processes
from tasks.services.supervisor import guard_children, start_process, wait_until_healthy

LOCAL_HOST = "127.0.0.1"
SERVER_NAME = "Prefect's temporary server"
TIMEOUT_HINT = (
    "raise server.ephemeral.startup_timeout_seconds in prefect.toml, or set PREFECT_API_URL to a running server"
)


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


@contextmanager
def prefect_api_for_this_run(meanwhile: Callable[[], object] | None = None) -> Iterator[TemporaryApi | None]:
    """The configured Prefect API (yields None), or a guarded temporary server for the length of the
    block (yields it); with temporary servers turned off (PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false),
    None and Prefect's own behaviour. `meanwhile` runs while the server starts (seconds, most of them
    creating its database in a fresh workspace; one core of two is idle until it answers)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        yield None
        return
    port = free_port()
    api_url = f"http://{LOCAL_HOST}:{port}/api"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", LOCAL_HOST, "--port", str(port)]
    command += ["--no-services", "--no-ui", "--analytics-off"]
    process = start_process(command, new_session=False)  # no log: its output is discarded
    guard_children([process.pid])
    # Stopped at exit, after Prefect's own exit hooks (registered later, so run earlier) have sent the
    # run's last logs and events to it; the watcher stops it if this process is killed.
    atexit.register(stop_processes, [process.pid])
    timeout_seconds = float(settings.server.ephemeral.startup_timeout_seconds)
    try:
        if meanwhile is not None:
            meanwhile()
        wait_until_healthy(f"{api_url}/health", SERVER_NAME, timeout_seconds, process, hint=TIMEOUT_HINT)
    except BaseException:
        stop_processes([process.pid])
        raise
    with temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield TemporaryApi(api_url, process.pid)

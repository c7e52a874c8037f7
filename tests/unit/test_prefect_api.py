"""The pipeline's own Prefect API when none is configured: Prefect's server started as a guarded child
(public `prefect server start`), waited for with clear errors; a configured API is used as it is."""

from __future__ import annotations

import os
import sys

import pytest

from tasks.runtime.prefect_api import SERVER_NAME, TIMEOUT_HINT, free_port, prefect_api_for_this_run
from tasks.services.supervisor import start_process, wait_until_healthy
from tasks.workspace.errors import ServiceError


def test_a_configured_api_is_used_and_nothing_is_started() -> None:
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    calls: list[str] = []
    heartbeat = get_current_settings().flows.heartbeat_frequency
    with (
        temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}),
        prefect_api_for_this_run(meanwhile=lambda: calls.append("meanwhile")) as api,
    ):
        assert api is None
        assert get_current_settings().flows.heartbeat_frequency == heartbeat  # a configured server's: as set
    assert calls == []  # no server to wait for: nothing is done "meanwhile"


def test_a_server_that_exits_or_stays_silent_is_an_error_naming_the_fix() -> None:
    """The temporary server is waited for as prefect_api_for_this_run waits for it (tasks.services.supervisor)."""
    url = f"http://127.0.0.1:{free_port()}/api/health"
    exits = start_process([sys.executable, "-c", "raise SystemExit(3)"], new_session=False)
    exits.wait()
    with pytest.raises(ServiceError, match="exited with code 3 before answering"):
        wait_until_healthy(url, SERVER_NAME, 5, exits, hint=TIMEOUT_HINT)
    silent = start_process([sys.executable, "-c", "import time; time.sleep(30)"], new_session=False)
    try:
        silent_error = r"did not answer .* within 1 s: raise server\.ephemeral\.startup_timeout"
        with pytest.raises(RuntimeError, match=silent_error):
            wait_until_healthy(url, SERVER_NAME, 1, silent, hint=TIMEOUT_HINT)
    finally:
        silent.kill()
        silent.wait()


def children_starting_a_prefect_server() -> list[int]:
    """Pids of this process's children whose command line is `... prefect server start ...`."""
    from tasks.runtime.lifeline import parent_of
    from tasks.runtime.processes import PROC_DIR

    found = []
    for entry in PROC_DIR.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if parent_of(int(entry.name)) == os.getpid() and b"server" in command and b"start" in command:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_failure_while_the_server_starts_stops_the_server(tmp_path, monkeypatch) -> None:
    """What runs "meanwhile" fails: the error reaches the caller and the server child is stopped."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.runtime.processes import is_alive

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    started: list[int] = []

    def fails() -> None:
        started.extend(children_starting_a_prefect_server())
        raise RuntimeError("failed while the server started")

    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(RuntimeError, match="failed while the server started"),
        prefect_api_for_this_run(meanwhile=fails),
    ):
        pass
    assert len(started) == 1
    assert not is_alive(started[0])

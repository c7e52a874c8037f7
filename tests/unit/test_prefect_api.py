"""The pipeline's own Prefect API when none is configured: Prefect's server started as a guarded child
(public `prefect server start`), waited for with clear errors; a configured API is used as it is."""

from __future__ import annotations

import sys

import pytest

from tasks.runtime.prefect_api import SERVER_NAME, TIMEOUT_HINT, free_port, prefect_api_for_this_run
from tasks.services.supervisor import start_process, wait_until_healthy
from tasks.workspace.errors import ServiceError


def test_a_configured_api_is_used_and_nothing_is_started() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    calls: list[str] = []
    with (
        temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}),
        prefect_api_for_this_run(meanwhile=lambda: calls.append("meanwhile")) as api,
    ):
        assert api is None
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

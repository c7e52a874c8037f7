"""The pipeline's own Prefect API when none is configured: Prefect's server started as a guarded child
(public `prefect server start`), waited for with clear errors; a configured API is used as it is."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tasks.prefect_api import free_port, prefect_api_for_this_run, wait_until_healthy


def test_a_configured_api_is_used_and_nothing_is_started() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}), prefect_api_for_this_run() as api:
        assert api is None


def test_a_server_that_exits_or_stays_silent_is_an_error_naming_the_fix() -> None:
    exits = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exits.wait()
    with pytest.raises(RuntimeError, match="exited with code 3 before answering"):
        wait_until_healthy(f"http://127.0.0.1:{free_port()}/api", exits, timeout_seconds=5)
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(RuntimeError, match=r"did not answer within 1 s: raise server\.ephemeral\.startup_timeout"):
            wait_until_healthy(f"http://127.0.0.1:{free_port()}/api", silent, timeout_seconds=1)
    finally:
        silent.kill()
        silent.wait()

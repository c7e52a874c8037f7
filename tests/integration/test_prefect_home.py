"""Runs from a fresh terminal (no Prefect variables) keep Prefect's state in the workspace: a stage
process (what `dvc repro` runs) with no API configured runs as plain Python and leaves no Prefect state
at all; the pipeline flow's own server writes to <workspace>/.prefect/prefect.db; nothing appears in
~/.prefect, so the runs of one checkout never show in another's UI."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import edit_params
from tests.support.environments import fresh_shell_environment

TINY_DOWNLOAD = {
    "data": {"source": "synthetic", "layout": "utsig"},
    "synthetic": {"writers": 2, "genuine_per_writer": 2, "skilled_per_writer": 1, "simple_per_writer": 0},
}
STAGE_TIMEOUT_SECONDS = 300
EPHEMERAL_STARTUP_SECONDS = "180"  # the temporary API on 2 busy cores


# A flow run through the pipeline entry point's own server (`tasks.runtime.prefect_api`), in the workspace;
# what the pipeline does while that server starts (`meanwhile`) runs once, before the block. Heartbeats
# are off against that server (nothing would watch them) and back to Prefect's default after it.
PIPELINE_LIKE = (
    "import flows\n"
    "from prefect import flow\n"
    "from prefect.settings import get_current_settings\n"
    "from tasks.runtime.prefect_api import prefect_api_for_this_run\n"
    "done = []\n"
    "default_heartbeat = get_current_settings().flows.heartbeat_frequency\n"
    "with prefect_api_for_this_run(meanwhile=lambda: done.append('imports')) as api:\n"
    "    assert api is not None and done == ['imports'], done\n"
    "    assert get_current_settings().flows.heartbeat_frequency is None\n"
    "    flow(name='probe', flow_run_name='probe run')(lambda: None)()\n"
    "assert default_heartbeat is not None\n"
    "assert get_current_settings().flows.heartbeat_frequency == default_heartbeat\n"
)


def run_in(workspace: Path, command: list[str], environment: dict[str, str]) -> None:
    result = subprocess.run(
        command, cwd=workspace, env=environment, capture_output=True, text=True, timeout=STAGE_TIMEOUT_SECONDS
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_prefect_state_stays_in_the_workspace(workspace: Path, tmp_path: Path) -> None:
    edit_params(workspace / "params.yaml", TINY_DOWNLOAD)
    home = tmp_path / "home"
    home.mkdir()
    environment = fresh_shell_environment(home)
    environment["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = EPHEMERAL_STARTUP_SECONDS
    run_in(workspace, [sys.executable, "-m", "flows.download"], environment)
    assert (workspace / "data" / "raw").is_dir()
    assert not (workspace / ".prefect" / "prefect.db").exists()  # no API configured: no Prefect run, no server
    run_in(workspace, [sys.executable, "-c", PIPELINE_LIKE], environment)
    assert not (home / ".prefect").exists()
    with sqlite3.connect(workspace / ".prefect" / "prefect.db") as database:
        names = [row[0] for row in database.execute("SELECT name FROM flow_run")]
    assert names == ["probe run"]

"""A stage run from a fresh terminal (no Prefect variables) keeps its Prefect runs in the workspace:
its temporary API writes to <workspace>/.prefect/prefect.db, and nothing appears in ~/.prefect,
so the runs of one checkout never show in another's UI."""

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


@pytest.mark.slow
def test_a_stage_keeps_its_prefect_runs_in_the_workspace(workspace: Path, tmp_path: Path) -> None:
    edit_params(workspace / "params.yaml", TINY_DOWNLOAD)
    home = tmp_path / "home"
    home.mkdir()
    environment = fresh_shell_environment(home)
    environment["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = EPHEMERAL_STARTUP_SECONDS
    result = subprocess.run(
        [sys.executable, "-m", "flows.download"],
        cwd=workspace,
        env=environment,
        capture_output=True,
        text=True,
        timeout=STAGE_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (home / ".prefect").exists()
    with sqlite3.connect(workspace / ".prefect" / "prefect.db") as database:
        names = [row[0] for row in database.execute("SELECT name FROM flow_run")]
    assert names == ["download (synthetic data, utsig layout)"]

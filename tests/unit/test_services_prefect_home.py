"""The services' command lines (`python -m tasks.services.local_services`, `python -m tasks.services.team`),
run outside make with no PREFECT_HOME, keep Prefect's state in the workspace's .prefect/, as the flows do:
the Prefect server they start would otherwise keep its runs in the ~/.prefect every checkout shares."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.environments import fresh_shell_environment

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMMAND_SECONDS = 120

# Each command line's harmless command, then the PREFECT_HOME its process would give what it starts.
PRINT_PREFECT_HOMES = """
import json, os
from tasks.services import local_services, team
homes = {}
for name, app, arguments in (
    ("local_services", local_services.app, ["down", "--run-dir", "run"]),
    ("team", team.app, ["local-credentials", "run"]),
):
    os.environ.pop("PREFECT_HOME", None)
    app(arguments, standalone_mode=False)
    homes[name] = os.environ.get("PREFECT_HOME")
print(json.dumps(homes))
"""


def test_the_service_command_lines_keep_prefect_state_in_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "dvc.yaml").write_text("stages: {}\n")
    home = tmp_path / "home"
    home.mkdir()
    environment = {**fresh_shell_environment(home), "PYTHONPATH": str(PROJECT_ROOT)}
    assert "PREFECT_HOME" not in environment
    result = subprocess.run(
        [sys.executable, "-c", PRINT_PREFECT_HOMES],
        cwd=workspace,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    homes = json.loads(result.stdout.strip().splitlines()[-1])
    assert homes == {"local_services": str(workspace / ".prefect"), "team": str(workspace / ".prefect")}

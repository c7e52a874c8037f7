"""Commands run to completion by the services' set-up (`make up`, `make team-up`): a console script of
this environment, and a run whose failure is one error naming what it did and how it ended."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tasks.workspace.errors import ConfigError

COMMAND_TIMEOUT_SECONDS = 300
ERROR_LINES = 3  # the end of a failed command's output (a traceback's last lines name the cause)


def tool(name: str) -> str:
    """A console script of this environment (prefect, mlflow, dvc, sigpipe): beside this interpreter."""
    return str(Path(sys.executable).parent / name)


def run(
    command: Sequence[str], environment: Mapping[str, str] | None = None, what: str = "", cwd: Path = Path("/")
) -> str:
    """Run `command` in `cwd`, returning its stdout; a failure raises ConfigError with its output and
    `what` it did. The default folder, `/`, is one every user (the postgres user too) may enter."""
    result = subprocess.run(
        list(command),
        cwd=cwd,
        env=dict(environment) if environment is not None else None,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        last_lines = (result.stderr or result.stdout).strip().splitlines()[-ERROR_LINES:]
        raise ConfigError(f"{what or command[0]} failed (exit {result.returncode}): {' | '.join(last_lines)}")
    return result.stdout

"""Environments for subprocesses that stand for a user's fresh terminal."""

from __future__ import annotations

import os
from pathlib import Path

PREFECT_VARIABLE_PREFIX = "PREFECT_"


def fresh_shell_environment(home: Path) -> dict[str, str]:
    """The environment of a new terminal of a user whose home folder is `home`: this one's, without
    any Prefect variable (no server, no Prefect home chosen)."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith(PREFECT_VARIABLE_PREFIX)}
    environment["HOME"] = str(home)
    return environment


SERVICE_VARIABLE_PREFIXES = ("PREFECT_", "MLFLOW_")


def services_clone_environment(identity: str, prefect_home: Path, **settings: str) -> dict[str, str]:
    """The environment of a clone that starts its own services (`make up`, `tasks.services.team up`): this one's
    without any Prefect or MLflow variable, its own Prefect home, a git identity named `identity`, this
    venv first on PATH, and `settings` (the ports, the team folders)."""
    import sys

    environment = {name: value for name, value in os.environ.items() if not name.startswith(SERVICE_VARIABLE_PREFIXES)}
    email = f"{identity}@localhost"
    environment.update(
        PREFECT_HOME=str(prefect_home),
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME=identity,
        GIT_AUTHOR_EMAIL=email,
        GIT_COMMITTER_NAME=identity,
        GIT_COMMITTER_EMAIL=email,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **settings,
    )
    return environment


def running_command_lines() -> list[str]:
    """The command line of every running process (/proc), to check that no secret is on one."""
    command_lines = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command_lines.append(path.read_bytes().decode(errors="replace"))
        except OSError:  # a process that ended meanwhile
            continue
    return command_lines

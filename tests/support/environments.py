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

"""Prefect flows of signature-pipeline: one module per stage, each runnable as `python -m flows.<stage>`.

Importing this package keeps Prefect's state (its database of runs, settings, result storage) in
the workspace's `.prefect/` folder instead of the `~/.prefect` that every checkout on the machine
shares, so one workspace's UI never lists another's runs. It has to happen here, before any
module imports Prefect: importing Prefect reads `PREFECT_HOME` and creates that folder. A
`PREFECT_HOME` already set wins (the Makefile sets the same folder); a profiles file in
`~/.prefect` (a server's URL, a Prefect Cloud login) is still read, so a server the user points
Prefect at stays in use.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKSPACE_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_MARKER = "dvc.yaml"  # a folder with it is a workspace (not an installed copy of the package)
PREFECT_HOME_FOLDER = ".prefect"
USER_PROFILES_FILE = Path("~/.prefect/profiles.toml")


def keep_prefect_state_in_workspace(root: Path = WORKSPACE_ROOT) -> None:
    """Set `PREFECT_HOME` to `<root>/.prefect` unless it is set, and keep reading the user's
    Prefect profiles file (`PREFECT_PROFILES_PATH`) when there is one."""
    if "PREFECT_HOME" in os.environ or not (root / WORKSPACE_MARKER).is_file():
        return
    os.environ["PREFECT_HOME"] = str(root / PREFECT_HOME_FOLDER)
    profiles = USER_PROFILES_FILE.expanduser()
    if "PREFECT_PROFILES_PATH" not in os.environ and profiles.is_file():
        os.environ["PREFECT_PROFILES_PATH"] = str(profiles)


keep_prefect_state_in_workspace()

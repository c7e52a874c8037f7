"""Prefect's state (its database of runs, settings, result storage) in the workspace's `.prefect/` folder
instead of the `~/.prefect` that every checkout on the machine shares, so one workspace's UI never
lists another's runs. Called before Prefect is imported or started: by `flows/__init__.py` (every
stage and the pipeline) and by the services' command lines (`python -m tasks.services.local_services`,
`python -m tasks.services.team`), whose servers and workers inherit it. A `PREFECT_HOME` already set
wins (the Makefile sets the same folder); a profiles file in `~/.prefect` (a server's URL, a Prefect
Cloud login) is still read, so a server the user points Prefect at stays in use. Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKSPACE_MARKER = "dvc.yaml"  # a folder with it is a workspace (not an installed copy of the package)
PREFECT_HOME_FOLDER = ".prefect"
USER_PROFILES_FILE = Path("~/.prefect/profiles.toml")


def keep_prefect_state_in_workspace(root: Path) -> None:
    """Set `PREFECT_HOME` to `<root>/.prefect` unless it is set or `root` is no workspace, and keep
    reading the user's Prefect profiles file (`PREFECT_PROFILES_PATH`) when there is one."""
    if "PREFECT_HOME" in os.environ or not (root / WORKSPACE_MARKER).is_file():
        return
    os.environ["PREFECT_HOME"] = str(root / PREFECT_HOME_FOLDER)
    profiles = USER_PROFILES_FILE.expanduser()
    if "PREFECT_PROFILES_PATH" not in os.environ and profiles.is_file():
        os.environ["PREFECT_PROFILES_PATH"] = str(profiles)

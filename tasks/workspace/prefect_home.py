"""Prefect's state (its database of runs, settings, result storage) in the workspace's `.prefect/` folder
instead of the `~/.prefect` that every checkout on the machine shares, so one workspace's UI never
lists another's runs. Called before Prefect is imported or started: by `flows/__init__.py` (every
stage and the pipeline) and by the services' command lines (`python -m tasks.services.local_services`,
`python -m tasks.services.team`), whose servers and workers inherit it. A `PREFECT_HOME` already set
wins (the Makefile sets the same folder); a profiles file in `~/.prefect` (a server's URL, a Prefect
Cloud login) is still read, so a server the user points Prefect at stays in use. Also: whether no
settings source can point Prefect at an API (`prefect_api_certainly_unset`), read without importing
Prefect. Standard library only.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


# The environment variables by which Prefect may be pointed at an API, or at settings this module does not read.
API_ENVIRONMENT_VARIABLES = ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_TEST_MODE", "PREFECT_UNIT_TEST_MODE")
DOTENV_FILE = ".env"  # in the working directory, as the environment
PREFECT_TOML_FILE = "prefect.toml"  # in the working directory: Prefect's settings as nested tables
PYPROJECT_FILE = "pyproject.toml"  # in the working directory: the same under [tool.prefect]
# The settings tables that can point Prefect at an API or at another profiles file.
API_SETTINGS_TABLES = ("api", "profiles_path")
API_URL_KEY = "API_URL"  # how a profile or a .env file sets the API: PREFECT_API_URL = "..."


def prefect_api_certainly_unset(environment: Mapping[str, str], folder: Path) -> bool:
    """True only when none of the sources Prefect 3 reads its settings from can set an API URL: no
    PREFECT_API_URL (nor a chosen profile, nor test mode) in `environment` or in `folder`'s `.env`; no
    `api` table (nor a profiles path) in `folder`'s `prefect.toml` or its `pyproject.toml`'s
    [tool.prefect]; and no profile in the profiles file (PREFECT_PROFILES_PATH, else PREFECT_HOME's,
    else ~/.prefect's) that sets one. `folder` is the working directory. A stage then runs without
    importing Prefect (about a second per process, issue 25); False means "ask Prefect"
    (`flows._stage.prefect_api_configured`), never "an API is configured"."""
    names = {name.upper() for name in environment}
    if any(name in names for name in API_ENVIRONMENT_VARIABLES):
        return False
    prefect_toml = read_toml(folder / PREFECT_TOML_FILE)
    pyproject_prefect = read_toml(folder / PYPROJECT_FILE).get("tool", {}).get("prefect", {})
    if any(table in settings for settings in (prefect_toml, pyproject_prefect) for table in API_SETTINGS_TABLES):
        return False
    if environment.get("PREFECT_PROFILES_PATH"):
        profiles = Path(environment["PREFECT_PROFILES_PATH"])
    elif environment.get("PREFECT_HOME"):
        profiles = Path(environment["PREFECT_HOME"]) / "profiles.toml"
    else:
        profiles = USER_PROFILES_FILE.expanduser()
    return not any(mentions_api(path) for path in (folder / DOTENV_FILE, profiles))


def mentions_api(path: Path) -> bool:
    """Whether the file (a profiles file, a .env file) may set Prefect's API URL or choose a profile: its
    text names one; a file that cannot be read may."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").upper()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return API_URL_KEY in text or "PREFECT_PROFILE" in text


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML file's content; empty when there is none. One that cannot be read or parsed is taken to
    hold an `api` table, so the caller asks Prefect (which names the broken file)."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError):
        return {"api": {}, "tool": {"prefect": {"api": {}}}}

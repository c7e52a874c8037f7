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
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WORKSPACE_MARKER = "dvc.yaml"  # a folder with it is a workspace (not an installed copy of the package)
PREFECT_HOME_FOLDER = ".prefect"
PROFILES_FILE_NAME = "profiles.toml"  # in a Prefect home
USER_PROFILES_FILE = Path("~") / PREFECT_HOME_FOLDER / PROFILES_FILE_NAME  # the default home's


def keep_prefect_state_in_workspace(root: Path) -> None:
    """Set `PREFECT_HOME` to `<root>/.prefect` unless it is set or `root` is no workspace, and keep
    reading the user's Prefect profiles file (`PREFECT_PROFILES_PATH`) when there is one."""
    if "PREFECT_HOME" in os.environ or not (root / WORKSPACE_MARKER).is_file():
        return
    os.environ["PREFECT_HOME"] = str(root / PREFECT_HOME_FOLDER)
    profiles = USER_PROFILES_FILE.expanduser()
    if "PREFECT_PROFILES_PATH" not in os.environ and profiles.is_file():
        os.environ["PREFECT_PROFILES_PATH"] = str(profiles)


# A setting's name (a variable, a .env line, a profile's key) that may point Prefect at an API
# (PREFECT_API_URL; PREFECT_API, a JSON table; the API's other settings count too), choose another
# profile, or turn plugins on (a plugin may set the API when Prefect starts).
API_SETTING_NAME = re.compile(r"PREFECT_API|PREFECT_PROFILE(?!S_PATH)|PLUGINS", re.IGNORECASE)
DOTENV_FILE = ".env"  # in the working directory, as the environment; it may also name a profiles file
DOTENV_API_SETTING = re.compile(r"PREFECT_API|PREFECT_PROFILE|PLUGINS", re.IGNORECASE)
PREFECT_TOML_FILE = "prefect.toml"  # in the working directory: Prefect's settings as nested tables
PYPROJECT_FILE = "pyproject.toml"  # in the working directory: the same under [tool.prefect]
# The tables of those files that can set an API, another profiles file, or plugins.
API_SETTINGS_TABLES = ("api", "profiles_path", "plugins", "experiments")


def prefect_api_certainly_unset(environment: Mapping[str, str], folder: Path) -> bool:
    """True only when none of the sources Prefect 3 reads its settings from can set an API URL: no
    `API_SETTING_NAME` among `environment`'s variables or in `folder`'s `.env`; no `API_SETTINGS_TABLES`
    table in `folder`'s `prefect.toml` or its `pyproject.toml`'s [tool.prefect]; and no profile of the
    profiles file (PREFECT_PROFILES_PATH, else PREFECT_HOME's, else the home folder's) with such a key.
    `folder` is the working directory. A stage then runs without importing Prefect (about a second per
    process, issue 25); False means "ask Prefect" (`flows._stage.prefect_api_configured`), never "an
    API is configured". Every doubt (a file that cannot be read or parsed) is a False."""
    if any(API_SETTING_NAME.search(name) for name in environment):
        return False
    prefect_toml, pyproject = read_toml(folder / PREFECT_TOML_FILE), read_toml(folder / PYPROJECT_FILE)
    tool = pyproject.get("tool", {}) if pyproject is not None else None
    pyproject_prefect = tool.get("prefect", {}) if isinstance(tool, dict) else None
    if prefect_toml is None or not isinstance(pyproject_prefect, dict):
        return False
    if any(table in settings for settings in (prefect_toml, pyproject_prefect) for table in API_SETTINGS_TABLES):
        return False
    if environment.get("PREFECT_PROFILES_PATH"):
        profiles = Path(environment["PREFECT_PROFILES_PATH"])
    elif environment.get("PREFECT_HOME"):
        profiles = Path(environment["PREFECT_HOME"]) / PROFILES_FILE_NAME
    else:
        profiles = Path(environment.get("HOME") or Path.home()) / USER_PROFILES_FILE.relative_to("~")
    return not dotenv_may_set_api(folder / DOTENV_FILE) and not profiles_may_set_api(profiles)


def dotenv_may_set_api(path: Path) -> bool:
    """Whether a .env file may set the API, choose a profile or a profiles file, or turn plugins on."""
    try:
        return DOTENV_API_SETTING.search(path.read_text(encoding="utf-8", errors="replace")) is not None
    except FileNotFoundError:
        return False
    except OSError:
        return True


def profiles_may_set_api(path: Path) -> bool:
    """Whether any profile of a profiles file has a key that may set the API (whichever profile is active)."""
    profiles = read_toml(path)
    if profiles is None:
        return True
    tables = profiles.get("profiles", {})
    if not isinstance(tables, dict):
        return True
    return any(
        not isinstance(settings, dict) or any(API_SETTING_NAME.search(str(key)) for key in settings)
        for settings in tables.values()
    )


def read_toml(path: Path) -> dict[str, Any] | None:
    """The TOML file's content; empty when there is none, None when it cannot be read or parsed (then the
    caller asks Prefect, which names the broken file)."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError):
        return None

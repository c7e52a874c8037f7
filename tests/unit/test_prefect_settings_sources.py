"""A stage answers "is a Prefect API configured?" without importing Prefect when no settings source can set
one (`tasks.workspace.prefect_home.prefect_api_certainly_unset`), and never says so when Prefect would
find one: every source Prefect 3 reads is tried, and Prefect's own answer compared in a fresh interpreter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.workspace.prefect_home import prefect_api_certainly_unset
from tests.support.environments import fresh_shell_environment

PROJECT_ROOT = Path(__file__).resolve().parents[2]
API_URL = "http://127.0.0.1:4999/api"
PROFILES = f'active = "team"\n\n[profiles.team]\nPREFECT_API_URL = "{API_URL}"\n'

# Each case: the files written in the working directory (or, for "home", in PREFECT_HOME; for "elsewhere",
# in a folder PREFECT_PROFILES_PATH names) and the environment variables set, on top of the project's own
# prefect.toml and pyproject.toml (which set no API).
CASES: dict[str, dict[str, dict[str, str]]] = {
    "none": {},
    "environment": {"environment": {"PREFECT_API_URL": API_URL}},
    "dotenv": {"files": {".env": f"PREFECT_API_URL={API_URL}\n"}},
    "prefect.toml": {"files": {"prefect.toml": f'[api]\nurl = "{API_URL}"\n'}},
    "pyproject.toml": {
        "files": {"pyproject.toml": f'[project]\nname = "x"\n\n[tool.prefect.api]\nurl = "{API_URL}"\n'}
    },
    "profiles in PREFECT_HOME": {"home": {"profiles.toml": PROFILES}},
    "PREFECT_PROFILES_PATH": {"elsewhere": {"profiles.toml": PROFILES}},
}

# In one fresh interpreter (Prefect imported once): for each case, Prefect's settings built anew from the
# case's working directory and environment, as a stage process would build them.
PREFECT_ANSWERS = """
import json, os, sys
from prefect.settings.models.root import Settings
answers = {}
for name, (folder, environment) in json.loads(sys.argv[1]).items():
    os.chdir(folder)
    saved = dict(os.environ)
    os.environ.update(environment)
    answers[name] = Settings().api.url or ""
    os.environ.clear()
    os.environ.update(saved)
print(json.dumps(answers))
"""


def case_folders(root: Path, name: str, case: dict[str, dict[str, str]]) -> tuple[Path, dict[str, str]]:
    """The case's working directory (the project's Prefect-related files plus its own) and environment."""
    folder, home, elsewhere = root / name / "workspace", root / name / "home", root / name / "elsewhere"
    for path in (folder, home, elsewhere):
        path.mkdir(parents=True)
    for file in ("prefect.toml", "pyproject.toml"):
        shutil.copy(PROJECT_ROOT / file, folder / file)
    for target, files in (
        (folder, case.get("files", {})),
        (home, case.get("home", {})),
        (elsewhere, case.get("elsewhere", {})),
    ):
        for file, text in files.items():
            (target / file).write_text(text)
    environment = {"PREFECT_HOME": str(home), **case.get("environment", {})}
    if case.get("elsewhere"):
        environment["PREFECT_PROFILES_PATH"] = str(elsewhere / "profiles.toml")
    return folder, environment


def test_no_api_is_certain_only_where_prefect_finds_none(tmp_path: Path) -> None:
    folders = {name: case_folders(tmp_path, name, case) for name, case in CASES.items()}
    environment = fresh_shell_environment(tmp_path / "user")
    command = [sys.executable, "-c", PREFECT_ANSWERS, json.dumps({k: (str(f), e) for k, (f, e) in folders.items()})]
    shown = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    prefect = json.loads(shown.stdout.strip().splitlines()[-1])
    ours = {
        name: prefect_api_certainly_unset({**environment, **env}, folder) for name, (folder, env) in folders.items()
    }
    assert prefect == {name: "" if name == "none" else API_URL for name in CASES}  # every source is one
    assert ours == {name: name == "none" for name in CASES}


@pytest.mark.parametrize("broken", ["prefect.toml", "pyproject.toml"])
def test_a_settings_file_that_cannot_be_parsed_means_ask_prefect(tmp_path: Path, broken: str) -> None:
    (tmp_path / broken).write_text("[api\nurl = ")
    assert not prefect_api_certainly_unset({"PREFECT_HOME": str(tmp_path)}, tmp_path)


def test_a_stage_without_an_api_runs_without_importing_prefect(tmp_path: Path) -> None:
    """The stage entry points' question, in a fresh interpreter in a workspace with no API: answered,
    and the stage run as its function, with Prefect never imported; with PREFECT_API_URL set, Prefect
    is asked (and says so)."""
    code = (
        "import sys, flows._stage as stage; "
        "ran = stage.call_stage(stage.StageFlow('probe', lambda params: 'ran'), 'params.yaml'); "
        "print(ran, stage.prefect_api_configured(), 'prefect' in sys.modules)"
    )
    environment = fresh_shell_environment(tmp_path)
    alone = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True
    )
    assert alone.stdout.split() == ["ran", "False", "False"], alone.stderr
    asked = "import sys, flows._stage as stage; print(stage.prefect_api_configured(), 'prefect' in sys.modules)"
    with_api = subprocess.run(
        [sys.executable, "-c", asked],
        cwd=PROJECT_ROOT,
        env={**environment, "PREFECT_API_URL": API_URL},
        capture_output=True,
        text=True,
    )
    assert with_api.stdout.split() == ["True", "True"], with_api.stderr

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
STAGES = ("download", "prepare", "embed", "train", "evaluate", "calibrate", "package", "register")
PROFILES = f'active = "team"\n\n[profiles.team]\nPREFECT_API_URL = "{API_URL}"\n'

# Each case: the files written in the working directory ("files"), in PREFECT_HOME ("home"), in the user's
# home folder ("user", a run without PREFECT_HOME) or in a folder named by PREFECT_PROFILES_PATH or by a
# settings file ("elsewhere", its path replacing {elsewhere}), and the environment variables set, on top
# of the project's own prefect.toml and pyproject.toml (which set no API).
JSON_API = f'{{"url": "{API_URL}"}}'
CASES: dict[str, dict[str, dict[str, str]]] = {
    "none": {},
    "environment": {"environment": {"PREFECT_API_URL": API_URL}},
    "environment, lower case": {"environment": {"prefect_api_url": API_URL}},
    "environment, the API table as JSON": {"environment": {"PREFECT_API": JSON_API}},
    "dotenv": {"files": {".env": f"PREFECT_API_URL={API_URL}\n"}},
    "dotenv, the API table as JSON": {"files": {".env": f"PREFECT_API='{JSON_API}'\n"}},
    "dotenv names a profiles file": {
        "files": {".env": "PREFECT_PROFILES_PATH={elsewhere}/profiles.toml\n"},
        "elsewhere": {"profiles.toml": PROFILES},
    },
    "prefect.toml": {"files": {"prefect.toml": f'[api]\nurl = "{API_URL}"\n'}},
    "prefect.toml names a profiles file": {
        "files": {"prefect.toml": 'profiles_path = "{elsewhere}/profiles.toml"\n'},
        "elsewhere": {"profiles.toml": PROFILES},
    },
    "pyproject.toml": {
        "files": {"pyproject.toml": f'[project]\nname = "x"\n\n[tool.prefect.api]\nurl = "{API_URL}"\n'}
    },
    "profiles in PREFECT_HOME": {"home": {"profiles.toml": PROFILES}},
    "a profile's key escaped": {
        "home": {"profiles.toml": PROFILES.replace("PREFECT_API_URL", '"PREFECT_API_\\u0055RL"')}
    },
    "a profile sets the API table as JSON": {
        "home": {"profiles.toml": f"active = \"team\"\n\n[profiles.team]\nPREFECT_API = '{JSON_API}'\n"}
    },
    "PREFECT_PROFILES_PATH": {"elsewhere": {"profiles.toml": PROFILES}, "environment": {"PREFECT_PROFILES_PATH": ""}},
    "profiles in the user's home folder": {"user": {"profiles.toml": PROFILES}},
}
# Cases where Prefect finds no API but the sources may set one (a plugin could, when Prefect starts): asking
# Prefect costs a second, never a wrong answer.
ASK_PREFECT_WITHOUT_AN_API = {"plugins turned on": {"environment": {"PREFECT_PLUGINS_ENABLED": "true"}}}

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


def case_folders(root: Path, user: Path, name: str, case: dict[str, dict[str, str]]) -> tuple[Path, dict[str, str]]:
    """The case's working directory (the project's Prefect-related files plus its own) and environment;
    `user` is the home folder of every case (Prefect reads it once, when imported)."""
    base = root / name.replace(" ", "_").replace(",", "").replace("'", "")
    folder, home, elsewhere = base / "workspace", base / "home", base / "elsewhere"
    for path in (folder, home, user / ".prefect", elsewhere):
        path.mkdir(parents=True, exist_ok=True)
    for file in ("prefect.toml", "pyproject.toml"):
        shutil.copy(PROJECT_ROOT / file, folder / file)
    targets = {"files": folder, "home": home, "user": user / ".prefect", "elsewhere": elsewhere}
    for place, target in targets.items():
        for file, text in case.get(place, {}).items():
            (target / file).write_text(text.replace("{elsewhere}", str(elsewhere)))
    environment = {"HOME": str(user), **case.get("environment", {})}
    if "user" not in case:
        environment["PREFECT_HOME"] = str(home)
    if "PREFECT_PROFILES_PATH" in environment:
        environment["PREFECT_PROFILES_PATH"] = str(elsewhere / "profiles.toml")
    return folder, environment


def test_no_api_is_certain_only_where_prefect_finds_none(tmp_path: Path) -> None:
    cases = {**CASES, **ASK_PREFECT_WITHOUT_AN_API}
    environment = fresh_shell_environment(tmp_path / "user")
    folders = {name: case_folders(tmp_path, tmp_path / "user", name, case) for name, case in cases.items()}
    command = [sys.executable, "-c", PREFECT_ANSWERS, json.dumps({k: (str(f), e) for k, (f, e) in folders.items()})]
    shown = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    prefect = json.loads(shown.stdout.strip().splitlines()[-1])
    ours = {
        name: prefect_api_certainly_unset({**environment, **env}, folder) for name, (folder, env) in folders.items()
    }
    found = {name: "" if name == "none" or name in ASK_PREFECT_WITHOUT_AN_API else API_URL for name in cases}
    assert prefect == found  # every case of CASES but "none" is a source Prefect reads an API from
    assert ours == {name: name == "none" for name in cases}


@pytest.mark.parametrize("broken", ["prefect.toml", "pyproject.toml"])
def test_a_settings_file_that_cannot_be_parsed_means_ask_prefect(tmp_path: Path, broken: str) -> None:
    (tmp_path / broken).write_text("[api\nurl = ")
    assert not prefect_api_certainly_unset({"PREFECT_HOME": str(tmp_path)}, tmp_path)


def test_a_stage_without_an_api_runs_without_importing_prefect(tmp_path: Path) -> None:
    """The stage entry points' question, in a fresh interpreter whose working directory and Prefect home
    hold no API: every stage module imported, a stage run as its function, and Prefect never imported;
    with PREFECT_API_URL set, Prefect is asked (and says so)."""
    stages = ", ".join(f"flows.{stage}" for stage in STAGES)
    code = (
        f"import sys, {stages}, flows._stage as stage; "
        "ran = stage.call_stage(stage.StageFlow('probe', lambda params: 'ran'), 'params.yaml'); "
        "print(ran, stage.prefect_api_configured(), 'prefect' in sys.modules)"
    )
    for file in ("prefect.toml", "pyproject.toml"):
        shutil.copy(PROJECT_ROOT / file, tmp_path / file)
    environment = {
        **fresh_shell_environment(tmp_path / "user"),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    alone = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert alone.stdout.split() == ["ran", "False", "False"], alone.stderr
    asked = "import sys, flows._stage as stage; print(stage.prefect_api_configured(), 'prefect' in sys.modules)"
    with_api = subprocess.run(
        [sys.executable, "-c", asked],
        cwd=tmp_path,
        env={**environment, "PREFECT_API_URL": API_URL},
        capture_output=True,
        text=True,
    )
    assert with_api.stdout.split() == ["True", "True"], with_api.stderr

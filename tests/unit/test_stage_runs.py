"""How stage runs appear in Prefect: their names, and the workspace's own Prefect home (runs of
other checkouts never show in this one's UI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows._stage import stage_run_name
from tasks.workspace.prefect_home import keep_prefect_state_in_workspace
from tests.conftest import edit_params
from tests.support.environments import fresh_shell_environment

PROFILE_API_URL = "http://127.0.0.1:4999/api"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PRINT_MAKE_PREFECT_HOME = "print-prefect-home: ; @echo $(PREFECT_HOME)"
PRINT_PREFECT_STATE = (
    "import flows, os, prefect.settings as s; "
    "print(os.environ['PREFECT_HOME']); print(s.get_current_settings().api.url or '')"
)


def test_stage_run_names_say_what_ran(workspace: Path, tmp_path: Path) -> None:
    params_file = workspace / "params.yaml"
    edit_params(
        params_file,
        {"train": {"mode": "cached", "epochs": 3}, "model": {"head": "mlp"}, "prepare": {"image_size": 75}},
    )
    assert stage_run_name("train", str(params_file), "witty-ant") == (
        "train (mlp head, cached, 75 px, up to 3 epochs) · witty-ant"
    )
    edit_params(params_file, {"model": {"head": "ridge"}})  # solved in closed form: no mode, no epochs
    assert stage_run_name("train", str(params_file)) == "train (ridge head, closed form, 75 px)"
    assert stage_run_name("prepare", str(params_file)) == "prepare (75 px)"
    # A run name never stops a run: an unreadable file or a stage without details gives the stage's name.
    assert stage_run_name("train", str(tmp_path / "missing.yaml")) == "train"
    assert stage_run_name("check_params", str(params_file), "witty-ant") == "check_params · witty-ant"


def test_an_explicit_prefect_home_and_non_workspaces_are_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "chosen"))
    keep_prefect_state_in_workspace(tmp_path)
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "chosen")
    monkeypatch.delenv("PREFECT_HOME")
    keep_prefect_state_in_workspace(tmp_path)  # no dvc.yaml: an installed copy, not a workspace
    assert "PREFECT_HOME" not in os.environ


def test_prefect_state_stays_in_the_workspace_and_a_users_server_profile_still_applies(
    workspace: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    command = [sys.executable, "-c", PRINT_PREFECT_STATE]
    environment = fresh_shell_environment(home)

    shown = subprocess.run(command, cwd=workspace, env=environment, capture_output=True, text=True, check=True)
    assert shown.stdout.splitlines() == [str(workspace / ".prefect"), ""]
    assert (workspace / ".prefect").is_dir() and not (home / ".prefect").exists()

    # A profile the user saved in ~/.prefect (`prefect config set PREFECT_API_URL=...`) still points at that server.
    (home / ".prefect").mkdir()
    (home / ".prefect" / "profiles.toml").write_text(
        f'active = "team"\n\n[profiles.team]\nPREFECT_API_URL = "{PROFILE_API_URL}"\n'
    )
    shown = subprocess.run(command, cwd=workspace, env=environment, capture_output=True, text=True, check=True)
    assert shown.stdout.splitlines() == [str(workspace / ".prefect"), PROFILE_API_URL]
    assert sorted(path.name for path in (home / ".prefect").iterdir()) == ["profiles.toml"]


def test_make_keeps_prefect_state_in_the_workspace_unless_prefect_home_is_set(tmp_path: Path) -> None:
    """`make up`'s server, `make demo` and the worker read the runs from the same place as the stages."""
    command = ["make", "-s", "--no-print-directory", "--eval", PRINT_MAKE_PREFECT_HOME, "print-prefect-home"]
    environment = fresh_shell_environment(tmp_path)
    shown = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == str(PROJECT_ROOT / ".prefect")
    environment["PREFECT_HOME"] = str(tmp_path / "chosen")
    shown = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == str(tmp_path / "chosen")


def test_make_ups_worker_asks_for_runs_every_two_seconds_unless_set(tmp_path: Path) -> None:
    """`make up`'s worker picks a deployment run up within 2 s (Prefect's default is 10); a user's value wins."""
    command = ["make", "-n", "--no-print-directory", "up"]
    environment = fresh_shell_environment(tmp_path)
    for given, expected in ((None, "2"), ("7", "7")):
        if given is not None:
            environment["PREFECT_WORKER_QUERY_SECONDS"] = given
        shown = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, check=True)
        # make up is one command (tasks/services/local_services.py), which gives the worker this interval
        # as PREFECT_WORKER_QUERY_SECONDS (`local_up`).
        lines = shown.stdout.replace("\\\n", " ").splitlines()  # the recipe's continued line, joined
        (start,) = [line for line in lines if "tasks.services.local_services up" in line]
        assert f"--worker-query-seconds {expected} " in start, shown.stdout

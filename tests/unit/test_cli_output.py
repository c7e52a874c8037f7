"""What the `sigpipe` process prints: only its answers (the libraries' notices come back with
`--verbose`), an unreadable input reported before anything heavy loads, and writer ids accepted
as the dataset names them.

One tiny model with numeric writer ids (001, 002, 003, as the adapters name UTSig's folders 1, 2,
3) is packaged and registered in a temporary MLflow store; every test runs the real command in
its own process, as a user's shell does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.serving.answers import MAX_LISTED_WRITERS, match_writer
from tasks.workspace.errors import ModelInputError
from tasks.workspace.paths import ProjectPaths
from tests.support.registered_model import registered_workspace

MODEL_NAME = "cli-output-test"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_SECONDS = 300
# Threshold 0: the tiny verifier scores writers 001 and 002 above it and 003 below (test_inference).
CALIBRATION = {"classes": ["001", "002", "003"], "temperature": 1.0, "threshold": 0.0, "unknown_class_id": 3}
IMPORT_TIME_PREFIX = "import time:"
HEAVY_MODULES = ("tensorflow", "keras", "mlflow", "prefect")
# What the libraries print on a CPU machine when nothing quiets them (absl's C++ logger, TensorFlow's
# oneDNN notice, Python warnings); `--verbose` lets them through.
LIBRARY_NOISE = ("absl::InitializeLog", "oneDNN", "Warning")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> ProjectPaths:
    """A workspace whose MLflow store holds a tiny packaged model with writers 001-003, champion of
    the workspace's `register.model_name`, and a signature image."""
    return registered_workspace(tmp_path_factory.mktemp("cli-output"), MODEL_NAME, CALIBRATION)


def sigpipe(paths: ProjectPaths, *arguments: str, python_options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `sigpipe ARGUMENTS` (as `python -m tasks.cli.app`) in the workspace, as a user's shell does:
    the workspace's own MLflow store, the environment's TensorFlow log level left as the user has it."""
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["PYTHONPATH"] = str(PROJECT_ROOT)
    return subprocess.run(
        [sys.executable, *python_options, "-m", "tasks.cli.app", *arguments],
        cwd=paths.root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )


def imported_modules(stderr: str) -> set[str]:
    """Top-level packages a process imported, from its `-X importtime` lines."""
    return {
        line.split("|")[-1].strip().split(".")[0] for line in stderr.splitlines() if line.startswith(IMPORT_TIME_PREFIX)
    }


def other_lines(stderr: str) -> list[str]:
    """stderr without the `-X importtime` lines."""
    return [line for line in stderr.splitlines() if not line.startswith(IMPORT_TIME_PREFIX)]


def test_predict_prints_its_answer_and_nothing_else(workspace: ProjectPaths) -> None:
    result = sigpipe(workspace, "predict", "signature.png")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    (line,) = result.stdout.splitlines()
    assert line.startswith("signature.png\t00")


def test_verify_prints_its_verdict_and_nothing_else(workspace: ProjectPaths) -> None:
    result = sigpipe(workspace, "verify", "signature.png", "--writer", "002")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    assert result.stdout.startswith("accept\tsignature.png\twriter 002\tscore ")


def test_verbose_brings_the_libraries_output_back(workspace: ProjectPaths) -> None:
    result = sigpipe(workspace, "--verbose", "predict", "signature.png")
    assert result.returncode == 0, result.stderr[-2000:]
    assert any(noise in result.stderr for noise in LIBRARY_NOISE), result.stderr
    assert result.stdout.startswith("signature.png\t00")


@pytest.mark.parametrize(
    "arguments",
    [("predict", "absent.png"), ("predict", "--json", "absent.png"), ("verify", "absent.png", "--writer", "1")],
    ids=["predict", "predict-json", "verify"],
)
def test_a_missing_image_is_reported_before_anything_heavy_loads(
    workspace: ProjectPaths, arguments: tuple[str, ...]
) -> None:
    result = sigpipe(workspace, *arguments, python_options=("-X", "importtime"))
    assert result.returncode == 1
    assert imported_modules(result.stderr).isdisjoint(HEAVY_MODULES)
    if "--json" in arguments:
        assert other_lines(result.stderr) == []
        assert json.loads(result.stdout)["error"] == "absent.png: no such file"
    else:
        assert other_lines(result.stderr) == ["error: absent.png: no such file"]


def test_a_folder_given_as_an_image_is_reported_before_the_model_loads(workspace: ProjectPaths) -> None:
    (workspace.root / "scans").mkdir(exist_ok=True)
    result = sigpipe(workspace, "predict", "scans", python_options=("-X", "importtime"))
    assert result.returncode == 1 and "tensorflow" not in imported_modules(result.stderr)
    assert other_lines(result.stderr) == ["error: scans: a folder, not an image file"]


def test_the_other_images_are_still_answered(workspace: ProjectPaths) -> None:
    result = sigpipe(workspace, "predict", "absent.png", "signature.png")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: absent.png: no such file"]
    assert result.stdout.startswith("signature.png\t00")


def test_verify_accepts_the_datasets_own_writer_names(workspace: ProjectPaths) -> None:
    """UTSig's folder `Genuine/1` is the model's writer `001`: the command answers for `1`, and the other
    spellings map as `1` does through `match_writer`, the one place `verify` turns a claim into an id
    (a process per spelling would load the model four times to show the same call)."""
    result = sigpipe(workspace, "verify", "signature.png", "--writer", "1")
    assert result.returncode == 0 and "writer 001" in result.stdout, result.stderr[-2000:]
    for claimed in ("1", "01", "001", " 2"):
        assert match_writer(claimed, CALIBRATION["classes"]) == f"00{claimed.strip()[-1]}", claimed


def test_an_unknown_writer_is_named_with_the_models_ids(workspace: ProjectPaths) -> None:
    result = sigpipe(workspace, "verify", "signature.png", "--writer", "17")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: writer '17' is not one the model knows; its 3 writers are 001, 002, 003: pass one of them"
    ]


def test_match_writer_maps_numerically_equal_ids_when_unambiguous() -> None:
    assert match_writer("7", ["007", "012"]) == "007"
    assert match_writer("writer7", ["writer7", "007"]) == "writer7"
    assert match_writer("12", ["007", "012"]) == "012"
    with pytest.raises(ModelInputError, match=r"matches several of the model's writers \(1, 001\)"):
        match_writer("01", ["1", "001"])


def test_many_writers_are_not_all_listed_but_the_closest_are() -> None:
    classes = [f"{number:03d}" for number in range(1, MAX_LISTED_WRITERS + 40)]
    with pytest.raises(ModelInputError) as raised:
        match_writer("0x17", classes)
    message = str(raised.value)
    assert f"({len(classes)} writers)" in message and "017" in message and "040" not in message

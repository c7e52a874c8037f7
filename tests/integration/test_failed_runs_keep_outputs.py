"""A run refused for a bad parameter keeps the last good outputs: real `dvc repro` and the real
pipeline flow on a generated workspace (download and prepare only, to stay fast)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.workspace.errors import ConfigError
from tests.conftest import edit_params
from tests.integration.test_stages import TINY_DATASET

KEPT_OUTPUTS = ("metrics/download.json", "metrics/prepare.json", "data/prepared/manifest.csv", "dvc.lock")
DVC_TIMEOUT_SECONDS = 300


def dvc(arguments: list[str], workspace: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["dvc", *arguments], cwd=workspace, env=env, capture_output=True, text=True, timeout=DVC_TIMEOUT_SECONDS
    )


def snapshot(workspace: Path) -> dict[str, bytes]:
    return {name: (workspace / name).read_bytes() for name in KEPT_OUTPUTS}


def break_params(params_file: Path, change: str) -> None:
    """Apply one of the bad edits an operator makes: a wrong type, a value train would reject, a lost group."""
    params = yaml.safe_load(params_file.read_text())
    if change == "missing calibrate group":
        del params["calibrate"]
    elif change == "image_size big":
        params["prepare"]["image_size"] = "big"
    elif change == "image_size 74":
        params["prepare"]["image_size"] = 74
    elif change == "negative epochs":
        params["train"]["epochs"] = -5
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_a_bad_parameter_stops_dvc_repro_before_any_output_is_removed(
    workspace: Path, subprocess_env: dict[str, str]
) -> None:
    params_file = workspace / "params.yaml"
    edit_params(params_file, TINY_DATASET)
    good_params = params_file.read_bytes()
    assert dvc(["init", "--no-scm", "-q"], workspace, subprocess_env).returncode == 0
    first = dvc(["repro", "prepare"], workspace, subprocess_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.index("Running stage 'check_params'") < first.stdout.index("Running stage 'download'")
    before = snapshot(workspace)

    for change, named in [
        ("image_size big", "prepare.image_size"),
        ("image_size 74", "prepare.image_size"),  # passes prepare's old bound, fails only in train
        ("negative epochs", "train.epochs"),
        ("missing calibrate group", "calibrate"),
    ]:
        params_file.write_bytes(good_params)
        break_params(params_file, change)
        # The whole pipeline: without the check, DVC would delete prepare's (or train's) outputs first.
        failed = dvc(["repro"], workspace, subprocess_env)
        output = failed.stdout + failed.stderr
        assert failed.returncode != 0, change
        assert named in output, output
        assert "Running stage 'download'" not in output and "Running stage 'prepare'" not in output, change
        assert snapshot(workspace) == before, change
        assert (workspace / "data" / "prepared" / "images").is_dir() and (workspace / "data" / "raw").is_dir()

    params_file.write_bytes(good_params)
    fixed = dvc(["repro", "prepare"], workspace, subprocess_env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "Running stage 'check_params'" in fixed.stdout
    assert "Running stage 'download'" not in fixed.stdout and "Running stage 'prepare'" not in fixed.stdout
    assert snapshot(workspace) == before


@pytest.mark.slow
def test_a_refused_override_leaves_params_and_outputs_untouched(
    workspace: Path, subprocess_env: dict[str, str], prefect_api_url: str
) -> None:
    from flows.pipeline import pipeline_flow

    params_file = workspace / "params.yaml"
    edit_params(params_file, TINY_DATASET)
    assert dvc(["init", "--no-scm", "-q"], workspace, subprocess_env).returncode == 0
    assert dvc(["repro", "prepare"], workspace, subprocess_env).returncode == 0
    before, params_before = snapshot(workspace), params_file.read_bytes()

    with pytest.raises(ConfigError, match=r"train\.epochs.*\n.*is unchanged"):
        pipeline_flow(str(params_file), overrides={"train.epochs": -5})
    assert params_file.read_bytes() == params_before
    assert snapshot(workspace) == before

    params_file.write_text(params_file.read_text().replace("image_size: 75", "image_size: 50"))
    with pytest.raises(ConfigError, match=r"prepare\.image_size"):
        pipeline_flow(str(params_file))  # no overrides: the file itself is checked before any stage
    assert snapshot(workspace) == before

"""The download and prepare flows, run as Prefect flows and through `dvc repro`, on generated data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.config import ConfigError
from tasks.manifest import read_manifest
from tests.conftest import edit_params

TINY_DATASET = {
    "synthetic": {
        "writers": 3,
        "genuine_per_writer": 8,
        "skilled_per_writer": 2,
        "simple_per_writer": 1,
        "opposite_per_writer": 2,
        "width": 96,
        "height": 64,
    },
    "prepare": {"image_size": 75, "workers": 1},
}
STAGE_TIMEOUT_SECONDS = 300


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command in the workspace, failing the test with its output when it fails."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=STAGE_TIMEOUT_SECONDS)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def changed_stages(workspace: Path, env: dict[str, str]) -> set[str]:
    """The stages whose own dependencies or parameters changed, as `dvc status` sees them."""
    return set(json.loads(run(["dvc", "status", "--json"], workspace, env).stdout))


def test_download_and_prepare_flows(workspace: Path, prefect_api_url: str) -> None:
    from flows.download import download_flow
    from flows.prepare import prepare_flow

    edit_params(workspace / "params.yaml", TINY_DATASET)
    params_file = str(workspace / "params.yaml")
    downloaded = download_flow(params_file)
    assert downloaded["files"] == 3 * 13
    assert json.loads((workspace / "metrics" / "download.json").read_text())["files"] == 3 * 13
    prepared = prepare_flow(params_file)
    assert prepared["images"] == 3 * 13 and prepared["writers"] == 3
    metrics = json.loads((workspace / "metrics" / "prepare.json").read_text())
    assert metrics["splits"]["test"]["genuine"] == 15
    assert len(read_manifest(workspace / "data" / "prepared" / "manifest.csv")) == 3 * 13


def test_flow_with_invalid_params_fails_naming_the_key(workspace: Path, prefect_api_url: str) -> None:
    from flows.prepare import prepare_flow

    edit_params(workspace / "params.yaml", {"prepare": {"image_size": "large"}})
    with pytest.raises(ConfigError, match=r"prepare\.image_size"):
        prepare_flow(str(workspace / "params.yaml"))


def test_entry_point_prints_one_line_error_and_exits_1(workspace: Path, subprocess_env: dict[str, str]) -> None:
    edit_params(workspace / "params.yaml", {"data": {"source": "local", "path": "does/not/exist"}})
    result = subprocess.run(
        [sys.executable, "-m", "flows.download"],
        cwd=workspace,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=STAGE_TIMEOUT_SECONDS,
    )
    assert result.returncode == 1
    assert "error: " in result.stderr and "does/not/exist" in result.stderr and "data.path" in result.stderr
    assert not (workspace / "data" / "raw").exists()


DVC_DATASET = {
    **TINY_DATASET,
    "synthetic": {**TINY_DATASET["synthetic"], "genuine_per_writer": 9, "width": 120, "height": 80},
    "evaluate": {"batch_size": 16, "top_k": 2},
    "calibrate": {"target_far": 0.2},  # 9 calibration unknowns can resolve a FAR of 0.2, not 0.05
    "prepare": {"image_size": 75, "workers": 1},
    "model": {"head": "mlp", "dense_units": 32},  # a trained head, so train.mode changes the model
    "train": {"epochs": 2, "augmented_views": 1},
    "tracking": {"log_model": False},  # logging the model is covered by the train flow test
}


@pytest.mark.slow
def test_dvc_repro_is_incremental(workspace: Path, subprocess_env: dict[str, str]) -> None:
    edit_params(workspace / "params.yaml", DVC_DATASET)
    run(["dvc", "init", "--no-scm", "-q"], workspace, subprocess_env)
    first = run(["dvc", "repro"], workspace, subprocess_env)
    for stage in ("download", "prepare", "train", "evaluate", "calibrate", "register"):
        assert f"Running stage '{stage}'" in first.stdout
    manifest = workspace / "data" / "prepared" / "manifest.csv"
    manifest_bytes = manifest.read_bytes()

    second = run(["dvc", "repro"], workspace, subprocess_env)
    assert "Running stage" not in second.stdout
    assert manifest.read_bytes() == manifest_bytes

    # Train and what follows it again from nothing (no MLflow store, no cached embeddings): every output
    # DVC records is the same to the byte, so dvc.lock is too, and a fresh clone's run leaves a committed
    # lock unchanged. (Download and prepare are rebuilt to the byte at the end of this test.)
    lock = (workspace / "dvc.lock").read_text()
    shutil.rmtree(workspace / "mlruns")
    shutil.rmtree(workspace / "data" / "features")
    forced = run(["dvc", "repro", "--force", "--downstream", "train"], workspace, subprocess_env)
    assert "Running stage 'register'" in forced.stdout and "Running stage 'prepare'" not in forced.stdout
    assert (workspace / "dvc.lock").read_text() == lock

    edit_params(workspace / "params.yaml", {"calibrate": {"target_far": 0.25}})
    only_calibrate = run(["dvc", "repro"], workspace, subprocess_env)
    assert "Running stage 'calibrate'" in only_calibrate.stdout
    for stage in ("download", "prepare", "train", "evaluate"):
        assert f"Running stage '{stage}'" not in only_calibrate.stdout
    assert "Running stage 'register'" in only_calibrate.stdout  # downstream of a stage whose outputs changed
    assert json.loads((workspace / "metrics" / "calibrate_details.json").read_text())["target_far"] == 0.25

    # Which stages a parameter reaches is dvc.yaml's declaration, which `dvc status` reads without running
    # anything; the stages downstream of a changed one rerun because its outputs change (the calibrate
    # change above ran register too), and identical inputs give identical outputs (the forced rerun).
    params = (workspace / "params.yaml").read_text()
    edit_params(workspace / "params.yaml", {"train": {"mode": "online"}})
    reached = changed_stages(workspace, subprocess_env)
    assert "train" in reached and not reached & {"download", "prepare", "evaluate", "calibrate"}
    (workspace / "params.yaml").write_text(params)
    edit_params(workspace / "params.yaml", {"prepare": {"image_size": 80}})
    reached = changed_stages(workspace, subprocess_env)
    assert "prepare" in reached and not reached & {"download", "train", "calibrate"}
    (workspace / "params.yaml").write_text(params)
    status = run(["dvc", "status"], workspace, subprocess_env)
    assert "up to date" in status.stdout
    # Rebuilding from scratch gives the same manifest: the stage is reproducible to the byte.
    rebuilt = manifest.read_bytes()
    run(["dvc", "repro", "--force", "--single-item", "prepare"], workspace, subprocess_env)
    assert manifest.read_bytes() == rebuilt

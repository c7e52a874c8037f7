"""The download and prepare flows, run as Prefect flows and as entry points, on generated data (`dvc repro`
of every stage: tests/integration/test_pipeline.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.data.manifest import read_manifest
from tasks.workspace.errors import ConfigError
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

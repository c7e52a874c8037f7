"""`dvc repro prepare` on the real CEDAR copy in ../shared (skipped where it is absent)."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tasks.data.manifest import read_manifest
from tests.conftest import edit_params

CEDAR_WRITERS = 55
CEDAR_IMAGES = 2640
CEDAR_UNENROLLED = 5
REPRO_TIMEOUT_SECONDS = 900


@pytest.mark.slow
@pytest.mark.cedar
def test_dvc_repro_prepare_on_cedar(workspace: Path, cedar_dir: Path, subprocess_env: dict[str, str]) -> None:
    edit_params(
        workspace / "params.yaml",
        {"data": {"source": "local", "layout": "cedar", "path": str(cedar_dir)}, "prepare": {"image_size": 75}},
    )
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=workspace, env=subprocess_env, check=True)
    before = sorted(path.name for path in (cedar_dir / "full_org").iterdir())
    result = subprocess.run(
        ["dvc", "repro", "prepare"],
        cwd=workspace,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=REPRO_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_manifest(workspace / "data" / "prepared" / "manifest.csv")
    assert len(rows) == CEDAR_IMAGES
    assert len({row["writer"] for row in rows}) == CEDAR_WRITERS
    assert len({row["path"] for row in rows}) == CEDAR_IMAGES  # no image in two splits
    genuine = Counter((row["writer"], row["split"]) for row in rows if row["kind"] == "genuine")
    unenrolled = {row["writer"] for row in rows if row["split"] == "unenrolled"}
    assert len(unenrolled) == CEDAR_UNENROLLED  # prepare.unenrolled_writers 0.1 of 55, rounded down
    for writer in {row["writer"] for row in rows} - unenrolled:
        assert genuine[(writer, "test")] == 5
        assert genuine[(writer, "train")] + genuine[(writer, "val")] == 19
    for writer in unenrolled:  # nothing of theirs is fitted on or calibrated with
        assert genuine[(writer, "unenrolled")] == 24
        assert {row["split"] for row in rows if row["writer"] == writer and row["kind"] != "genuine"} == {"unused"}
    enrolled_skilled = {row["split"] for row in rows if row["kind"] == "skilled" and row["writer"] not in unenrolled}
    assert enrolled_skilled == {"calibration", "test"}
    assert sorted(path.name for path in (cedar_dir / "full_org").iterdir()) == before

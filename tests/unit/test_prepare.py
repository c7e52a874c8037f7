"""The prepare stage's core on a generated dataset: manifest, images, report, bad files."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.data.manifest import read_manifest
from tasks.data.prepare import prepare_dataset, prepare_metrics
from tasks.data.synthetic import write_synthetic_dataset
from tasks.workspace.paths import ProjectPaths
from tests.conftest import prepare_params, synthetic_params


def generated_workspace(root: Path) -> ProjectPaths:
    paths = ProjectPaths.from_root(root)
    write_synthetic_dataset(synthetic_params(), paths.raw_dir)
    return paths


def test_manifest_has_one_row_per_image_and_valid_splits(tmp_path: Path) -> None:
    paths = generated_workspace(tmp_path)
    summary, _listing, skipped = prepare_dataset(paths, "utsig", prepare_params(), show_progress=False)
    rows = read_manifest(paths.manifest_file)
    assert summary.manifest_rows == len(rows) == 4 * (8 + 2 + 1 + 2)
    assert skipped == []
    assert len({row["path"] for row in rows}) == len(rows)
    for row in rows:
        assert (paths.root / row["path"]).is_file()
        image = Image.open(paths.root / row["prepared_path"])
        assert (image.mode, image.size) == ("L", (prepare_params().image_size,) * 2)
        assert len(row["source_sha256"]) == 64
        if row["kind"] == "genuine":
            assert row["split"] in {"train", "val", "test"}
        else:
            assert row["split"] in {"calibration", "test"}
    per_writer = Counter((row["writer"], row["split"]) for row in rows if row["kind"] == "genuine")
    assert all(per_writer[(writer, "test")] == 5 for writer in ("001", "002", "003", "004"))
    metrics = prepare_metrics(summary)
    assert metrics["images"] == len(rows) and metrics["writers"] == 4
    assert metrics["splits"]["test"]["genuine"] == 20


def test_bad_files_are_skipped_reported_and_never_modified(tmp_path: Path) -> None:
    paths = generated_workspace(tmp_path)
    genuine_dir = paths.raw_dir / "UTSig" / "Genuine" / "1"
    (genuine_dir / "8.tif").write_bytes(b"corrupt bytes")
    Image.fromarray(np.full((64, 96), 250, dtype=np.uint8)).save(genuine_dir / "7.tif")
    (paths.raw_dir / "UTSig" / "notes.txt").write_text("hello")
    before = {path: path.read_bytes() for path in paths.raw_dir.rglob("*") if path.is_file()}
    summary, _listing, skipped = prepare_dataset(paths, "utsig", prepare_params(), show_progress=False)
    reasons = {item.path: item.reason for item in skipped}
    assert "cannot be read" in reasons["UTSig/Genuine/1/8.tif"]
    assert "no ink" in reasons["UTSig/Genuine/1/7.tif"]
    assert "UTSig/notes.txt" in reasons
    rows = read_manifest(paths.manifest_file)
    assert summary.manifest_rows == len(rows) == 4 * 13 - 2
    # The writer with two unusable genuine images still gets its five test images.
    assert sum(1 for row in rows if row["writer"] == "001" and row["split"] == "test" and row["kind"] == "genuine") == 5
    report = paths.data_report_file.read_text()
    assert "UTSig/Genuine/1/8.tif" in report and "UTSig/Genuine/1/7.tif" in report
    assert "UTSig/Genuine/1/8.tif" in paths.skipped_file.read_text()
    assert before == {path: path.read_bytes() for path in paths.raw_dir.rglob("*") if path.is_file()}


def test_outputs_are_byte_identical_across_runs_and_worker_counts(tmp_path: Path) -> None:
    first = generated_workspace(tmp_path / "one")
    second = ProjectPaths.from_root(tmp_path / "two")
    shutil.copytree(first.raw_dir, second.raw_dir)
    prepare_dataset(first, "utsig", prepare_params(workers=1), show_progress=False)
    prepare_dataset(second, "utsig", prepare_params(workers=2), show_progress=False)
    for relative in ("manifest.csv", "skipped.csv", "data_report.md"):
        assert (first.prepared_dir / relative).read_bytes() == (second.prepared_dir / relative).read_bytes()
    images = sorted(path.relative_to(first.prepared_dir) for path in first.prepared_images_dir.rglob("*.png"))
    assert images
    assert all((first.prepared_dir / p).read_bytes() == (second.prepared_dir / p).read_bytes() for p in images)

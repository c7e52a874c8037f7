"""The embed stage's files: rows are matched to the manifest by path and image hash, and embeddings of
other images (an older manifest), missing rows or unreadable files stop with a line naming the file
and the fix; the light stages read them without TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.training.embedding_files import (
    EmbeddedRows,
    aligned_rows,
    embedding_file,
    load_embedded_rows,
    load_split_embeddings,
    save_embedded_rows,
)
from tasks.workspace.errors import EmbeddingsError
from tests.conftest import PROJECT_ROOT


def manifest_row(path: str, digest: str, split: str = "val") -> dict[str, str]:
    return {"path": path, "prepared_sha256": digest, "split": split, "writer": "001", "kind": "genuine"}


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    views = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    save_embedded_rows(
        EmbeddedRows(views, ("a.png", "b.png", "c.png"), ("ha", "hb", "hc")), embedding_file(tmp_path, "val")
    )
    return tmp_path


def test_rows_come_back_in_the_manifest_order_asked(stored: Path) -> None:
    wanted = [manifest_row("c.png", "hc"), manifest_row("a.png", "ha")]
    rows = load_split_embeddings(stored, "val", wanted)
    assert rows.paths == ("c.png", "a.png")
    np.testing.assert_array_equal(rows.clean, [[8, 9, 10, 11], [0, 1, 2, 3]])
    np.testing.assert_array_equal(rows.views[1, 0], [20, 21, 22, 23])
    assert rows.subset(np.array([False, True])).paths == ("a.png",)


def test_an_image_embedded_from_other_pixels_is_refused(stored: Path) -> None:
    with pytest.raises(EmbeddingsError, match=r"b\.png was embedded from another image in .*val\.npz.*dvc repro embed"):
        load_split_embeddings(stored, "val", [manifest_row("b.png", "changed")])


def test_a_row_the_file_lacks_is_refused(stored: Path) -> None:
    with pytest.raises(EmbeddingsError, match=r"new\.png is not in .*val\.npz"):
        load_split_embeddings(stored, "val", [manifest_row("new.png", "hn")])


def test_a_missing_or_foreign_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingsError, match=r"test\.npz does not exist\. Rerun the embed stage"):
        load_embedded_rows(embedding_file(tmp_path, "test"))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, other=np.zeros(3))
    with pytest.raises(EmbeddingsError, match=r"foreign\.npz lacks the arrays"):
        load_embedded_rows(foreign)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(EmbeddingsError, match=r"truncated\.npz cannot be read"):
        load_embedded_rows(truncated)


def test_an_empty_split_reads_as_no_rows(tmp_path: Path) -> None:
    save_embedded_rows(EmbeddedRows(np.zeros((1, 0, 4), np.float32), (), ()), embedding_file(tmp_path, "unenrolled"))
    rows = aligned_rows(load_embedded_rows(embedding_file(tmp_path, "unenrolled")), [], tmp_path)
    assert len(rows) == 0 and rows.clean.shape == (0, 4)


def test_the_light_stages_import_no_tensorflow() -> None:
    """train (ridge head), evaluate and calibrate work on embeddings: importing their flows and the
    modules they call loads neither TensorFlow nor Keras (issue 25, point 2)."""
    modules = ", ".join(
        (
            "flows.train",
            "flows.evaluate",
            "flows.calibrate",
            "tasks.training.train",
            "tasks.evaluation.evaluate",
            "tasks.evaluation.calibrate",
            "tasks.evaluation.calibration_report",
            "tasks.model.head",
        )
    )
    code = f"import sys, {modules}; print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))"
    shown = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]", shown.stderr

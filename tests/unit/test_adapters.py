"""Every dataset adapter on generated folder trees: what it finds, what it skips, how it fails."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tasks.data.datasets import LayoutError, list_dataset
from tasks.data.synthetic import write_synthetic_dataset
from tests.conftest import synthetic_params


def touch(root: Path, *relative_paths: str) -> None:
    """Create small placeholder files (adapters list files; they never open them)."""
    for relative in relative_paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x00")


def kinds(result) -> Counter:
    return Counter(record.kind for record in result.records)


def test_utsig_layout_from_the_generator(tmp_path: Path) -> None:
    params = synthetic_params(writers=3, genuine_per_writer=4, skilled_per_writer=2, simple_per_writer=3)
    write_synthetic_dataset(params, tmp_path)
    result = list_dataset(tmp_path, "utsig")
    assert kinds(result) == {"genuine": 12, "skilled": 6, "simple": 9, "opposite": 6}
    assert {record.writer for record in result.records} == {"001", "002", "003"}
    assert result.skipped == []
    assert all(record.path.startswith("UTSig/") for record in result.records)


def test_utsig_reads_any_forgery_file_name_and_reports_strays(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "archive/UTSig/Genuine/7/1.tif",
        "archive/UTSig/Genuine/7/2.TIF",
        "archive/UTSig/Forgery/Skilled/7/s-first.png",
        "archive/UTSig/Forgery/Opposite Hand/7/oh.tif",
        "archive/UTSig/Forgery/Traced/7/x.tif",
        "archive/UTSig/Genuine/loose.tif",
        "archive/README.txt",
    )
    result = list_dataset(tmp_path, "utsig")
    assert kinds(result) == {"genuine": 2, "skilled": 1, "opposite": 1}
    assert {record.writer for record in result.records} == {"007"}
    skipped = {item.path: item.reason for item in result.skipped}
    assert "writer folder" in skipped["archive/UTSig/Genuine/loose.tif"]
    assert "archive/README.txt" in skipped
    assert "archive/UTSig/Forgery/Traced/7/x.tif" in skipped
    assert any("Traced" in note for note in result.notes)


def test_utsig_crop_names(tmp_path: Path) -> None:
    names = [f"UTSig_Crop/C001G{n:02d}.PNG" for n in (1, 2, 27)]
    names += [f"UTSig_Crop/C001F{n:02d}.PNG" for n in (1, 42, 43, 45, 46)]
    names += ["UTSig_Crop/c002g01.png", "UTSig_Crop/notes.PNG"]
    touch(tmp_path, *names)
    result = list_dataset(tmp_path, "utsig_crop")
    assert kinds(result) == {"genuine": 4, "skilled": 2, "opposite": 2}
    assert {record.writer for record in result.records} == {"001", "002"}
    skipped = {item.path: item.reason for item in result.skipped}
    assert "F46" in skipped["UTSig_Crop/C001F46.PNG"]
    assert "does not match" in skipped["UTSig_Crop/notes.PNG"]
    assert any("skilled" in note for note in result.notes)


def test_cedar_names(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "cedar/full_org/original_1_1.png",
        "cedar/full_org/original_1_2.png",
        "cedar/full_org/original_12_1.png",
        "cedar/full_forg/forgeries_1_1.png",
        "cedar/full_org/Thumbs.db",
        "cedar/full_org/copy of original_1_1.png",
    )
    result = list_dataset(tmp_path, "cedar")
    assert kinds(result) == {"genuine": 3, "skilled": 1}
    assert {record.writer for record in result.records} == {"001", "012"}
    assert [item.path for item in result.skipped] == ["cedar/full_org/copy of original_1_1.png"]


def test_generic_folder_layout(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "mine/alice/genuine/a.png",
        "mine/alice/genuine/b.JPG",
        "mine/alice/forged/f.tif",
        "mine/bob/genuine/1.jpeg",
        "mine/bob/opposite/o.png",
        "mine/bob/genuine/notes.txt",
        "mine/carol/forged/x.png",
    )
    result = list_dataset(tmp_path, "folder")
    assert kinds(result) == {"genuine": 3, "skilled": 1, "opposite": 1}
    assert {record.writer for record in result.records} == {"alice", "bob"}
    skipped = {item.path: item.reason for item in result.skipped}
    assert "not an image" in skipped["mine/bob/genuine/notes.txt"]
    assert "mine/carol/forged/x.png" in skipped
    assert any("carol" in note for note in result.notes)


@pytest.mark.parametrize("layout", ["utsig", "utsig_crop", "cedar", "folder"])
def test_wrong_layout_names_expected_and_found(layout: str, tmp_path: Path) -> None:
    touch(tmp_path, "something/else.png", "other.txt")
    with pytest.raises(LayoutError) as caught:
        list_dataset(tmp_path, layout)
    message = str(caught.value)
    assert f"'{layout}'" in message and "expects" in message
    assert "something/" in message and "other.txt" in message


def test_layout_that_matches_folders_but_no_images(tmp_path: Path) -> None:
    touch(tmp_path, "UTSig/Genuine/1/readme.txt")
    with pytest.raises(LayoutError, match="no signature images"):
        list_dataset(tmp_path, "utsig")


def test_missing_raw_folder_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="download stage"):
        list_dataset(tmp_path / "absent", "utsig")
    with pytest.raises(LayoutError, match="unknown"):
        list_dataset(tmp_path, "mcyt")

"""What `sigpipe score` reads before Spark starts: the listing of images to score."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from tasks.scoring.batch_scoring import check_output, read_listing
from tasks.workspace.errors import ConfigError, ListingError


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 255).save(path)
    return path


def test_a_folder_lists_its_images_recursively_in_a_stable_order(tmp_path: Path) -> None:
    second, first = image(tmp_path / "b" / "2.png"), image(tmp_path / "a" / "1.tif")
    (tmp_path / "notes.txt").write_text("not an image")
    listing = read_listing(tmp_path)
    assert listing["path"].tolist() == [str(first), str(second)]
    assert listing["claimed_writer"].tolist() == ["", ""]


def test_a_csv_listing_keeps_its_claims_and_reads_relative_paths_from_its_folder(tmp_path: Path) -> None:
    listing_file = tmp_path / "lists" / "cheques.csv"
    listing_file.parent.mkdir()
    listing_file.write_text("path,claimed_writer\nscans/1.png,001\n/abs/2.png,\n")
    listing = read_listing(listing_file)
    assert listing["path"].tolist() == [str(tmp_path / "lists" / "scans" / "1.png"), "/abs/2.png"]
    assert listing["claimed_writer"].tolist() == ["001", ""]  # ids keep their leading zeros


def test_a_text_listing_has_one_path_per_line(tmp_path: Path) -> None:
    listing_file = tmp_path / "images.txt"
    listing_file.write_text("# today's scans\n\n1.png\n  2.png  \n")
    assert read_listing(listing_file)["path"].tolist() == [str(tmp_path / "1.png"), str(tmp_path / "2.png")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,writer\n1.png,001\n", "no 'path' column (found ['file', 'writer'])"),
        ("path\n", "no images to score"),
    ],
)
def test_a_listing_that_names_no_images_is_refused_with_the_fix(tmp_path: Path, content: str, message: str) -> None:
    listing_file = tmp_path / "listing.csv"
    listing_file.write_text(content)
    with pytest.raises(ListingError, match=re.escape(message)) as raised:
        read_listing(listing_file)
    assert str(listing_file) in str(raised.value)


def test_a_missing_source_or_an_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ListingError, match="no such folder or listing file"):
        read_listing(tmp_path / "absent")
    with pytest.raises(ListingError, match="no images to score"):
        read_listing(tmp_path)


def test_an_existing_output_is_kept_unless_overwrite_is_asked(tmp_path: Path) -> None:
    output = tmp_path / "scores.parquet"
    check_output(output, overwrite=False)
    output.mkdir()
    with pytest.raises(ConfigError, match="--overwrite"):
        check_output(output, overwrite=False)
    check_output(output, overwrite=True)

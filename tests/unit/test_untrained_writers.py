"""A writer with no usable genuine signature is unknown to the model: its forgeries stay out of
calibration and test (they are not forgeries of a known writer) and the data report lists it."""

from __future__ import annotations

from pathlib import Path

from tasks.data.datasets.base import SignatureRecord
from tasks.data.manifest import read_manifest
from tasks.data.prepare import prepare_dataset
from tasks.data.split import (
    UNKNOWN_WRITER_SPLIT,
    assign_splits,
    short_writers,
    writers_without_training,
)
from tests.unit.test_prepare import generated_workspace
from tests.unit.test_split import RULES, records


def without_genuine(listing: list[SignatureRecord], writer: str) -> list[SignatureRecord]:
    """`listing` less `writer`'s genuine signatures (as when prepare skipped them all as unusable)."""
    return [record for record in listing if not (record.writer == writer and record.kind == "genuine")]


def test_forgeries_of_a_writer_without_genuine_signatures_are_set_aside() -> None:
    listing = without_genuine(records(writers=6), "003")
    assignment = assign_splits(listing, RULES)
    orphans = {assignment[record.path] for record in listing if record.writer == "003"}
    assert orphans == {UNKNOWN_WRITER_SPLIT}
    others = {assignment[record.path] for record in listing if record.writer != "003" and record.kind != "genuine"}
    assert others == {"calibration", "test"}
    assert writers_without_training(listing, assignment) == {"003": 6 + 3}
    assert "003" not in short_writers(listing, RULES)


def test_both_sides_stay_non_empty_among_the_known_writers() -> None:
    """Only known writers are drawn, so an unknown one cannot be the writer that fills a side alone
    (with three writers one of them is always alone on its side)."""
    listing = records(writers=3)
    for unknown in ("001", "002", "003"):
        assignment = assign_splits(without_genuine(listing, unknown), RULES)
        sides = {assignment[r.path] for r in listing if r.writer != unknown and r.kind != "genuine"}
        assert sides == {"calibration", "test"}, unknown


def test_a_writer_with_one_genuine_signature_keeps_its_forgeries() -> None:
    listing = [*without_genuine(records(writers=4), "002"), SignatureRecord("002", "genuine", "1", "g/2/1.tif")]
    assignment = assign_splits(listing, RULES)
    assert assignment["g/2/1.tif"] == "train"
    assert writers_without_training(listing, assignment) == {}
    assert {assignment[record.path] for record in listing if record.writer == "002" and record.kind != "genuine"} < {
        "calibration",
        "test",
    }


def test_prepare_sets_them_aside_and_reports_them(tmp_path: Path) -> None:
    from tests.conftest import prepare_params

    paths = generated_workspace(tmp_path)
    for image in (paths.raw_dir / "UTSig" / "Genuine" / "2").iterdir():
        image.write_bytes(b"not an image")
    prepare_dataset(paths, "utsig", prepare_params(), show_progress=False)
    rows = read_manifest(paths.manifest_file)
    assert {row["split"] for row in rows if row["writer"] == "002"} == {UNKNOWN_WRITER_SPLIT}
    assert {row["kind"] for row in rows if row["writer"] == "002"} == {"skilled", "simple", "opposite"}
    report = paths.data_report_file.read_text()
    section = report.split("## Writers without a usable genuine signature")[1].split("##")[0]
    assert "- 002: 5" in section and "not in calibration or test" in section

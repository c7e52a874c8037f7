"""Adapter for CEDAR: `full_org/original_<w>_<n>.png` and `full_forg/forgeries_<w>_<n>.png`.

CEDAR's genuine scans have grey, noisy paper and its forgeries pure white paper; the `prepare`
stage removes the background so that a model cannot tell the two apart by it.
"""

from __future__ import annotations

import re
from pathlib import Path

from tasks.data.datasets.base import (
    AdapterResult,
    SignatureRecord,
    SkippedFile,
    find_layout_root,
    is_image_file,
    layout_error,
    relative_posix,
)
from tasks.workspace.writer_ids import normalise_writer_id

KIND_FOLDERS = {
    "full_org": ("genuine", re.compile(r"^original_(?P<writer>\d+)_(?P<number>\d+)\.png$", re.IGNORECASE)),
    "full_forg": ("skilled", re.compile(r"^forgeries_(?P<writer>\d+)_(?P<number>\d+)\.png$", re.IGNORECASE)),
}
EXPECTED = "full_org/original_<writer>_<n>.png and full_forg/forgeries_<writer>_<n>.png"


def read_cedar(raw_dir: Path) -> AdapterResult:
    """List every signature of a CEDAR copy found under `raw_dir`."""
    root = find_layout_root(raw_dir, lambda folder: (folder / "full_org").is_dir())
    if root is None:
        raise layout_error("cedar", EXPECTED, raw_dir)
    records: list[SignatureRecord] = []
    skipped: list[SkippedFile] = []
    notes: list[str] = []
    for folder_name, (kind, pattern) in KIND_FOLDERS.items():
        folder = root / folder_name
        if not folder.is_dir():
            notes.append(f"cedar: no {folder_name}/ folder, so no '{kind}' signatures.")
            continue
        for file in sorted(folder.iterdir()):
            match = pattern.match(file.name) if is_image_file(file) else None
            if match is None:
                if file.is_file():
                    skipped.append(SkippedFile(relative_posix(file, raw_dir), f"name does not match {pattern.pattern}"))
                continue
            writer = normalise_writer_id(match["writer"])
            records.append(SignatureRecord(writer, kind, f"{int(match['number']):02d}", relative_posix(file, raw_dir)))
    return AdapterResult(records, skipped, notes)

"""Adapter for the cropped UTSig variant: one flat folder of `C{writer:03d}{G|F}{n:02d}.PNG`.

`G01`-`G27` are genuine. `F01`-`F42` are forgeries; this layout does not say which are skilled
and which are simple, so all are reported as `skilled` (the harder, conservative reading) and
the data report says so. `F43`-`F45` are taken to be the opposite-hand samples.
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

CROP_NAME = re.compile(r"^C(?P<writer>\d{3})(?P<letter>[GF])(?P<number>\d{2})\.png$", re.IGNORECASE)
LAST_FORGERY_NUMBER = 42
LAST_OPPOSITE_NUMBER = 45
EXPECTED = "one folder of files named C<writer:3 digits><G|F><n:2 digits>.PNG"
FORGERY_NOTE = (
    "utsig_crop: file names do not distinguish skilled from simple forgeries; "
    f"F01-F{LAST_FORGERY_NUMBER} are all reported as 'skilled', "
    f"F{LAST_FORGERY_NUMBER + 1}-F{LAST_OPPOSITE_NUMBER} as 'opposite'."
)


def holds_crop_files(folder: Path) -> bool:
    """True when `folder` directly holds at least one file named like a cropped UTSig image."""
    return any(CROP_NAME.match(entry.name) for entry in folder.iterdir() if entry.is_file())


def kind_of(letter: str, number: int) -> str | None:
    """The signature kind of a `G`/`F` file number, or None when the number is out of range."""
    if letter.upper() == "G":
        return "genuine"
    if 1 <= number <= LAST_FORGERY_NUMBER:
        return "skilled"
    if number <= LAST_OPPOSITE_NUMBER:
        return "opposite"
    return None


def read_utsig_crop(raw_dir: Path) -> AdapterResult:
    """List every signature of a `UTSig_Crop` folder found under `raw_dir`."""
    root = find_layout_root(raw_dir, holds_crop_files)
    if root is None:
        raise layout_error("utsig_crop", EXPECTED, raw_dir)
    records: list[SignatureRecord] = []
    skipped: list[SkippedFile] = []
    for file in sorted(path for path in root.iterdir() if is_image_file(path)):
        match = CROP_NAME.match(file.name)
        relative = relative_posix(file, raw_dir)
        if match is None:
            skipped.append(SkippedFile(relative, "name does not match C<writer><G|F><n>.PNG"))
            continue
        number = int(match["number"])
        kind = kind_of(match["letter"], number)
        if kind is None:
            skipped.append(SkippedFile(relative, f"F{number:02d} is beyond F{LAST_OPPOSITE_NUMBER}"))
            continue
        records.append(SignatureRecord(normalise_writer_id(match["writer"]), kind, f"{number:02d}", relative))
    return AdapterResult(records, skipped, [FORGERY_NOTE])

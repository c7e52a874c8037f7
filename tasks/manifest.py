"""The manifest: one row per prepared image (where it came from, whose it is, which split).

Kept apart from `tasks.prepare`, which writes it, so the stages that only read it (train,
evaluate, register) do not import the image processing and dataset layouts.
"""

from __future__ import annotations

import csv
from pathlib import Path

MANIFEST_COLUMNS = (
    "path",
    "prepared_path",
    "writer",
    "kind",
    "sample",
    "split",
    "source_sha256",
    "prepared_sha256",
    "original_width",
    "original_height",
    "ink_threshold",
)


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Read `manifest.csv` back as a list of rows (strings)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))

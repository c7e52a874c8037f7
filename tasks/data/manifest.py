"""The manifest: one row per prepared image (where it came from, whose it is, which split).

Kept apart from `tasks.data.prepare`, which writes it, so the stages that only read it (train,
evaluate, register) do not import the image processing and dataset layouts.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from tasks.workspace.errors import TrainingDataError

GENUINE_KIND = "genuine"  # the manifest's `kind` of a writer's own signature
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


def training_rows(manifest_rows: Sequence[dict[str, str]]) -> tuple[tuple[str, ...], dict[str, list[dict[str, str]]]]:
    """The writers with training images (the classes) and the genuine train and val rows of those writers."""
    genuine = [row for row in manifest_rows if row["kind"] == GENUINE_KIND]
    classes = tuple(sorted({row["writer"] for row in genuine if row["split"] == "train"}))
    if len(classes) < 2:
        raise TrainingDataError(
            f"the manifest has {len(classes)} writer(s) with training images; at least 2 are needed"
        )
    by_split = {
        split: [row for row in genuine if row["split"] == split and row["writer"] in classes]
        for split in ("train", "val")
    }
    if not by_split["val"]:
        raise TrainingDataError(
            "no validation images: early stopping needs them. Set prepare.val_fraction above 0 "
            "(and enough genuine signatures per writer), then rerun prepare."
        )
    return classes, by_split

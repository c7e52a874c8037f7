"""Dataset adapters: one per folder layout, chosen by `data.layout`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tasks.data.datasets.base import (
    IGNORED_NAMES,
    AdapterResult,
    LayoutError,
    SignatureRecord,
    SkippedFile,
    relative_posix,
)
from tasks.data.datasets.cedar import read_cedar
from tasks.data.datasets.folder import read_folder
from tasks.data.datasets.utsig import read_utsig
from tasks.data.datasets.utsig_crop import read_utsig_crop

ADAPTERS: dict[str, Callable[[Path], AdapterResult]] = {
    "utsig": read_utsig,
    "utsig_crop": read_utsig_crop,
    "cedar": read_cedar,
    "folder": read_folder,
}

__all__ = ["ADAPTERS", "AdapterResult", "LayoutError", "SignatureRecord", "SkippedFile", "list_dataset"]


def list_dataset(raw_dir: Path, layout: str) -> AdapterResult:
    """Run the adapter for `layout` on `raw_dir`, and report every file it did not use.

    Files the adapter neither recorded nor skipped itself (a stray README, an image outside the
    layout's folders) are added to the skipped list, so the data report accounts for every file.
    """
    if layout not in ADAPTERS:
        raise LayoutError(f"data.layout '{layout}' is unknown; choose one of {sorted(ADAPTERS)}")
    if not raw_dir.is_dir():
        raise LayoutError(f"{raw_dir} does not exist: run the download stage first (dvc repro download)")
    result = ADAPTERS[layout](raw_dir)
    if not result.records:
        raise LayoutError(
            f"data.layout '{layout}' matched folders under {raw_dir} but no signature images in them; "
            "check the file names and extensions (png, jpg, tif, bmp)."
        )
    accounted = {record.path for record in result.records} | {item.path for item in result.skipped}
    strays = [
        SkippedFile(relative_posix(path, raw_dir), f"outside the {layout} layout")
        for path in sorted(raw_dir.rglob("*"))
        if path.is_file() and path.name not in IGNORED_NAMES and relative_posix(path, raw_dir) not in accounted
    ]
    reported = [item for item in [*result.skipped, *strays] if Path(item.path).name not in IGNORED_NAMES]
    return AdapterResult(sorted(result.records), sorted(reported), result.notes)

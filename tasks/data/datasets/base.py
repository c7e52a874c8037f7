"""What every dataset adapter returns, and the helpers they share.

An adapter lists the files of one folder layout; it never opens an image and never assumes a
file exists because of its name. Files that do not fit the layout are reported, not dropped in
silence, and a layout that matches nothing fails with a message naming what was expected and
what was found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tasks.workspace.errors import LayoutError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
SIGNATURE_KINDS = ("genuine", "skilled", "simple", "opposite")
IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
LAYOUT_SEARCH_DEPTH = 3
LISTING_PREVIEW_ENTRIES = 12


@dataclass(frozen=True, order=True)
class SignatureRecord:
    """One signature image found by an adapter.

    `path` is relative to the raw data folder; `sample` is the file's number or name within its
    writer and kind, used only to order files deterministically.
    """

    writer: str
    kind: str
    sample: str
    path: str


@dataclass(frozen=True, order=True)
class SkippedFile:
    """A file that is not part of the dataset, with the reason it was left out."""

    path: str
    reason: str


@dataclass(frozen=True)
class AdapterResult:
    """The records an adapter found, the files it skipped, and notes for the data report."""

    records: list[SignatureRecord]
    skipped: list[SkippedFile]
    notes: list[str]


def is_image_file(path: Path) -> bool:
    """True for a regular file with one of the accepted image suffixes (any letter case)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def relative_posix(path: Path, raw_dir: Path) -> str:
    """`path` relative to the raw data folder, with forward slashes on every platform."""
    return path.relative_to(raw_dir).as_posix()


def find_layout_root(raw_dir: Path, matches: Callable[[Path], bool]) -> Path | None:
    """The shallowest folder under `raw_dir` (itself included) for which `matches` is true.

    Archives often wrap their content in one or two folders (`UTSig/`, `cedar/`), so the search
    goes a few levels down, breadth first and in sorted order so the answer is deterministic.
    """
    level = [raw_dir]
    for _depth in range(LAYOUT_SEARCH_DEPTH + 1):
        for folder in level:
            if matches(folder):
                return folder
        level = sorted(child for folder in level for child in folder.iterdir() if child.is_dir())
        if not level:
            break
    return None


def describe_folder(raw_dir: Path) -> str:
    """A short listing of what is in `raw_dir`, for error messages about an unexpected layout."""
    if not raw_dir.is_dir():
        return f"{raw_dir} does not exist"
    entries = sorted(raw_dir.iterdir())
    shown = [f"{entry.name}/" if entry.is_dir() else entry.name for entry in entries]
    preview = ", ".join(shown[:LISTING_PREVIEW_ENTRIES])
    more = len(shown) - LISTING_PREVIEW_ENTRIES
    suffix = f", ... and {more} more" if more > 0 else ""
    return f"{raw_dir} holds {len(shown)} entries: {preview or '(nothing)'}{suffix}"


def layout_error(layout: str, expected: str, raw_dir: Path) -> LayoutError:
    """The error for a raw folder that does not match `layout`, naming both sides."""
    return LayoutError(
        f"data.layout is '{layout}', which expects {expected}, but {describe_folder(raw_dir)}. "
        "Set data.layout to the layout of your files (utsig, utsig_crop, cedar, folder), "
        "or arrange them as described in README (Datasets)."
    )


def skipped_unexpected(paths: Iterable[Path], raw_dir: Path, reason: str) -> list[SkippedFile]:
    """Report each file in `paths` (not folders, not bookkeeping files) as skipped for `reason`."""
    return [
        SkippedFile(relative_posix(path, raw_dir), reason)
        for path in sorted(paths)
        if path.is_file() and path.name not in IGNORED_NAMES
    ]

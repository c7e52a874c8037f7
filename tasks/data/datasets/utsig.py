"""Adapter for UTSig's original archive layout.

    <root>/Genuine/<writer>/<n>.tif
    <root>/Forgery/Skilled/<writer>/*
    <root>/Forgery/Simple/<writer>/*
    <root>/Forgery/Opposite Hand/<writer>/*

File names inside the forgery folders are not documented, so every image file found there is
taken, whatever its name.
"""

from __future__ import annotations

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

GENUINE_FOLDER = "genuine"
FORGERY_FOLDER = "forgery"
FORGERY_KIND_FOLDERS = {"skilled": "skilled", "simple": "simple", "oppositehand": "opposite"}
EXPECTED = "a folder with Genuine/<writer>/ and Forgery/{Skilled,Simple,Opposite Hand}/<writer>/"


def folder_key(name: str) -> str:
    """Folder names compared without case, spaces, hyphens or underscores."""
    return "".join(character for character in name.lower() if character.isalnum())


def child_folder(parent: Path, key: str) -> Path | None:
    """The sub-folder of `parent` whose `folder_key` is `key`, if there is one."""
    if not parent.is_dir():
        return None
    for child in sorted(parent.iterdir()):
        if child.is_dir() and folder_key(child.name) == key:
            return child
    return None


def read_writer_folders(kind_dir: Path, kind: str, raw_dir: Path) -> tuple[list[SignatureRecord], list[SkippedFile]]:
    """Records for `<kind_dir>/<writer>/<file>`; files elsewhere in `kind_dir` are skipped."""
    records: list[SignatureRecord] = []
    skipped: list[SkippedFile] = []
    for entry in sorted(kind_dir.iterdir()):
        if entry.is_file():
            skipped.append(SkippedFile(relative_posix(entry, raw_dir), "not inside a writer folder"))
            continue
        writer = normalise_writer_id(entry.name)
        for file in sorted(entry.rglob("*")):
            if is_image_file(file):
                records.append(SignatureRecord(writer, kind, file.stem, relative_posix(file, raw_dir)))
    return records, skipped


def read_utsig(raw_dir: Path) -> AdapterResult:
    """List every signature of a UTSig archive extracted under `raw_dir`."""
    root = find_layout_root(raw_dir, lambda folder: child_folder(folder, GENUINE_FOLDER) is not None)
    if root is None:
        raise layout_error("utsig", EXPECTED, raw_dir)
    genuine_dir = child_folder(root, GENUINE_FOLDER)
    assert genuine_dir is not None  # guaranteed by find_layout_root's predicate
    records, skipped = read_writer_folders(genuine_dir, "genuine", raw_dir)
    notes: list[str] = []
    forgery_dir = child_folder(root, FORGERY_FOLDER)
    if forgery_dir is None:
        notes.append("No Forgery/ folder: the dataset has genuine signatures only.")
    else:
        for kind_dir in sorted(path for path in forgery_dir.iterdir() if path.is_dir()):
            kind = FORGERY_KIND_FOLDERS.get(folder_key(kind_dir.name))
            if kind is None:
                notes.append(
                    f"Forgery/{kind_dir.name}/ is not a known forgery kind "
                    "(Skilled, Simple, Opposite Hand): its files are skipped."
                )
                continue
            kind_records, kind_skipped = read_writer_folders(kind_dir, kind, raw_dir)
            records.extend(kind_records)
            skipped.extend(kind_skipped)
    return AdapterResult(records, skipped, notes)

"""Adapter for users' own data: `<root>/<writer>/{genuine,forged,opposite}/*`.

Any png, jpg, tif or bmp file counts. `forged/` holds skilled forgeries; `simple/` is accepted
too, for random or simple forgeries. Writers without a `genuine/` folder are skipped and listed.
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

KIND_FOLDERS = {"genuine": "genuine", "forged": "skilled", "simple": "simple", "opposite": "opposite"}
EXPECTED = "<root>/<writer>/genuine/* (and optionally forged/, simple/, opposite/)"


def holds_writer_folders(folder: Path) -> bool:
    """True when some sub-folder of `folder` has a `genuine/` folder of its own."""
    return any(child.is_dir() and (child / "genuine").is_dir() for child in folder.iterdir())


def read_folder(raw_dir: Path) -> AdapterResult:
    """List every signature of a `<writer>/<kind>/` tree found under `raw_dir`."""
    root = find_layout_root(raw_dir, holds_writer_folders)
    if root is None:
        raise layout_error("folder", EXPECTED, raw_dir)
    records: list[SignatureRecord] = []
    skipped: list[SkippedFile] = []
    notes: list[str] = []
    for writer_dir in sorted(path for path in root.iterdir() if path.is_dir()):
        if not (writer_dir / "genuine").is_dir():
            notes.append(f"folder: {writer_dir.name}/ has no genuine/ folder; it is not a writer.")
            continue
        for kind_dir in sorted(path for path in writer_dir.iterdir() if path.is_dir()):
            kind = KIND_FOLDERS.get(kind_dir.name.lower())
            if kind is None:
                notes.append(f"folder: {writer_dir.name}/{kind_dir.name}/ is not one of {sorted(KIND_FOLDERS)}.")
                continue
            for file in sorted(kind_dir.iterdir()):
                relative = relative_posix(file, raw_dir)
                if is_image_file(file):
                    records.append(SignatureRecord(writer_dir.name, kind, file.stem, relative))
                elif file.is_file():
                    skipped.append(SkippedFile(relative, "not an image file (png, jpg, tif, bmp)"))
    return AdapterResult(records, skipped, notes)

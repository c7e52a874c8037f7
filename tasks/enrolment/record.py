"""The enrolment record: which writers were added from references and which dataset writers were removed.

It lives in `data/enrolments/` (`ProjectPaths.enrolments_dir`), a dependency of the `prepare` stage, so
the next `dvc repro` rebuilds a model with every enrolled writer and without every removed one:

    data/enrolments/README.md                               what this folder is (the one file git tracks)
    data/enrolments/removed.json                            {"removed": [writer, ...]}: dataset writers left out
    data/enrolments/writers/<writer>/enrolment.json         references (file, name given, SHA-256), sequence
    data/enrolments/writers/<writer>/references/<file>      each reference, byte for byte as given
    data/enrolments/writers/<writer>/embeddings.npz         their embeddings (clean and augmented views)

Only JSON and paths here (no NumPy, no TensorFlow): `prepare` imports this module to list the references.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.data.datasets.base import SignatureRecord
from tasks.workspace.errors import EnrolmentError
from tasks.workspace.paths import ProjectPaths
from tasks.workspace.writer_ids import normalise_writer_id

WRITERS_FOLDER = "writers"
REFERENCES_FOLDER = "references"
RECORD_FILE = "enrolment.json"
EMBEDDINGS_FILE = "embeddings.npz"
REMOVED_FILE = "removed.json"
GENUINE = "genuine"
# A writer id is a folder name: letters, digits, '_', '-' and '.', not starting with '.' (no path tricks).
WRITER_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
SHORT_DIGEST = 12  # hex digits of a reference's SHA-256 in its stored file name


@dataclass(frozen=True)
class Reference:
    """One stored reference: its file under `references/`, the name it was given with, its SHA-256."""

    file: str
    given_name: str
    sha256: str


@dataclass(frozen=True)
class Enrolment:
    """One enrolled writer: its references in enrolment order, and when it was enrolled (`sequence`)."""

    writer: str
    sequence: int
    references: tuple[Reference, ...]


def writer_id(name: str) -> str:
    """`name` as the dataset adapters write writer ids (`7` -> `007`), refused unless it is a safe folder name."""
    writer = normalise_writer_id(name)
    if not WRITER_ID.fullmatch(writer):
        raise EnrolmentError(
            f"writer id {name!r}: use letters, digits, '_', '-' or '.', at most 64, not starting with '.'"
        )
    return writer


def writer_dir(paths: ProjectPaths, writer: str) -> Path:
    """The folder of one enrolled writer."""
    return paths.enrolments_dir / WRITERS_FOLDER / writer


def record_file(paths: ProjectPaths, writer: str) -> Path:
    return writer_dir(paths, writer) / RECORD_FILE


def embeddings_file(paths: ProjectPaths, writer: str) -> Path:
    return writer_dir(paths, writer) / EMBEDDINGS_FILE


def stored_name(given_name: str, sha256: str) -> str:
    """The file name a reference is kept under: its digest first, so two files of one name never clash."""
    return f"{sha256[:SHORT_DIGEST]}_{Path(given_name).name}"


def reference_manifest_path(paths: ProjectPaths, writer: str, reference: Reference) -> str:
    """The reference's `path` in the manifest (relative to the workspace, as the raw images' are)."""
    target = writer_dir(paths, writer) / REFERENCES_FOLDER / reference.file
    return target.relative_to(paths.root).as_posix()


def read_enrolment(paths: ProjectPaths, writer: str) -> Enrolment | None:
    """The enrolment of `writer`, or None when it has none."""
    path = record_file(paths, writer)
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        references = tuple(Reference(**item) for item in content["references"])
        return Enrolment(content["writer"], int(content["sequence"]), references)
    except (ValueError, KeyError, TypeError) as error:
        raise EnrolmentError(f"{path}: not an enrolment record ({error}); remove the writer's folder") from error


def enrolments(paths: ProjectPaths) -> list[Enrolment]:
    """Every enrolled writer, in enrolment order."""
    folder = paths.enrolments_dir / WRITERS_FOLDER
    if not folder.is_dir():
        return []
    found = [read_enrolment(paths, child.name) for child in sorted(folder.iterdir()) if child.is_dir()]
    return sorted((item for item in found if item is not None), key=lambda item: (item.sequence, item.writer))


def write_enrolment(paths: ProjectPaths, enrolment: Enrolment, sources: dict[str, Path]) -> None:
    """Store `enrolment`: the reference files not stored yet (stored name -> the file given), then its record."""
    folder = writer_dir(paths, enrolment.writer) / REFERENCES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        shutil.copyfile(source, folder / name)
    content = {"writer": enrolment.writer, "sequence": enrolment.sequence}
    content["references"] = [asdict(reference) for reference in enrolment.references]  # type: ignore[assignment]
    record_file(paths, enrolment.writer).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def delete_enrolment(paths: ProjectPaths, writer: str) -> bool:
    """Delete the writer's folder (references and embeddings); True when there was one."""
    folder = writer_dir(paths, writer)
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True


def removed_writers(paths: ProjectPaths) -> set[str]:
    """The dataset writers `sigpipe remove` left out (the raw data keeps them; `prepare` skips them)."""
    path = paths.enrolments_dir / REMOVED_FILE
    if not path.is_file():
        return set()
    try:
        return {str(writer) for writer in json.loads(path.read_text(encoding="utf-8"))["removed"]}
    except (ValueError, KeyError, TypeError) as error:
        raise EnrolmentError(f'{path}: expected {{"removed": [writer ids]}} ({error})') from error


def write_removed_writers(paths: ProjectPaths, writers: set[str]) -> None:
    """Record the removed dataset writers (sorted, so the same set gives the same bytes)."""
    paths.enrolments_dir.mkdir(parents=True, exist_ok=True)
    content = json.dumps({"removed": sorted(writers)}, indent=2) + "\n"
    (paths.enrolments_dir / REMOVED_FILE).write_text(content, encoding="utf-8")


def enrolled_records(paths: ProjectPaths) -> list[SignatureRecord]:
    """Every stored reference as a genuine record of its writer, its path relative to the enrolment folder
    (what `prepare` preprocesses and puts in `train`)."""
    records = []
    for enrolment in enrolments(paths):
        for reference in enrolment.references:
            relative = f"{WRITERS_FOLDER}/{enrolment.writer}/{REFERENCES_FOLDER}/{reference.file}"
            records.append(SignatureRecord(enrolment.writer, GENUINE, reference.file, relative))
    return records

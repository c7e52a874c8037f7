"""Copying a dataset source on disk (a folder or an archive) into the folder that becomes `data/raw`.

Only reads the source. Symbolic links in a folder are never followed out of it: links that leave
it, broken links, link loops and links to folders are skipped and listed; a link to a file inside
the folder is copied as a plain file. Inside a folder, a file is an archive only when its name
says so (`.zip`, `.tar.gz`...), and archives are extracted within the `download` parameters' size
limits (`tasks.data.archives`).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from tasks.data.archives import ArchiveLimits, is_archive, safe_extract
from tasks.data.http_download import DEFAULT_ARCHIVE_NAME, PARTIAL_SUFFIX
from tasks.workspace.errors import DownloadError
from tasks.workspace.files import sha256_file


@dataclass(frozen=True)
class SkippedEntry:
    """A file or link of a source folder that was left out of `data/raw`, with the reason."""

    path: str
    reason: str


def link_problem(link: Path, root: Path) -> str | None:
    """Why the symbolic link `link` is not copied; None for a link to a regular file inside `root`.

    A link that leaves `root` could bring any readable file (`/etc/passwd`, another dataset)
    into `data/raw` and the DVC cache; a link to a folder inside `root` only repeats a folder
    that is copied where it lies anyway, and not following folder links means no link loop.
    """
    try:
        real = link.resolve(strict=True)
    except FileNotFoundError:
        return f"broken link (its target {os.readlink(link)} does not exist)"
    except RuntimeError:  # Python before 3.13 reports a loop this way.
        return "link loop (following the link leads back to it)"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "link loop (following the link leads back to it)"
        return f"link cannot be followed ({error.strerror})"
    if not real.is_relative_to(root):
        return f"link to {real}, outside the source folder"
    if real.is_dir():
        return "link to a folder (not followed; the folder is copied where it lies)"
    if not stat.S_ISREG(real.stat().st_mode):
        return "link to a special file (not a regular file)"
    return None


def archive_folder(archive: Path) -> Path:
    """The folder an archive found inside a source folder is extracted to: its name up to the first dot."""
    return archive.with_name(archive.name.split(".")[0] or DEFAULT_ARCHIVE_NAME)


def copy_folder(source: Path, target: Path, limits: ArchiveLimits) -> list[SkippedEntry]:
    """Copy a folder tree into `target`; archives inside are extracted to a folder of their name.

    Only reads `source`. A file is an archive when its name says so (`.zip`, `.tar.gz`...), so an
    image with a zip appended stays an image. An archive next to a folder of that name
    (`UTSig.zip` beside `UTSig/`) is taken to be the packed copy of it: it is copied as it is,
    and the data report lists it as a skipped file. Symbolic links are judged by `link_problem`:
    a link to a file inside `source` is copied as a plain file; every other link, and any special
    file (fifo, socket, device), is skipped and returned with its reason.
    """
    root = source.resolve()
    skipped: list[SkippedEntry] = []
    archives: list[tuple[Path, Path]] = []
    target.mkdir(parents=True)
    for folder, folders, files in os.walk(root):
        here = Path(folder)
        (target / here.relative_to(root)).mkdir(exist_ok=True)
        folders.sort()
        for name in sorted([*folders, *files]):
            path = here / name
            relative = path.relative_to(root)
            if path.is_symlink():
                problem = link_problem(path, root)
                if problem:
                    skipped.append(SkippedEntry(relative.as_posix(), problem))
                    continue
            elif name in folders:
                continue  # a real folder: os.walk enters it
            elif not stat.S_ISREG(path.stat().st_mode):
                skipped.append(SkippedEntry(relative.as_posix(), "special file (not a regular file)"))
                continue
            if name.endswith(PARTIAL_SUFFIX):
                continue
            content = path.resolve()
            if is_archive(path):
                archives.append((content, target / relative))
            else:
                shutil.copy2(content, target / relative)
    for content, destination in archives:
        if archive_folder(destination).exists():
            shutil.copy2(content, destination)
        else:
            safe_extract(content, archive_folder(destination), limits)
    return sorted(skipped, key=lambda entry: entry.path)


def materialise(source: Path, target: Path, expected_sha256: str | None, limits: ArchiveLimits) -> list[SkippedEntry]:
    """Put `source` (a folder or an archive) into `target`, verifying an archive's checksum if given.

    `data.path` names either a folder or an archive, so a file is extracted whatever its name
    (its format is read from the name, or from the content when the name says nothing).
    Returns what a folder copy skipped.
    """
    if source.is_dir():
        return copy_folder(source, target, limits)
    if not source.is_file():
        raise DownloadError(f"{source}: no such file or folder. Fix data.path in params.yaml.")
    if expected_sha256 and sha256_file(source) != expected_sha256.lower():
        raise DownloadError(f"{source}: checksum differs from data.sha256; fix data.sha256 or the file.")
    safe_extract(source, target, limits)
    return []


def resolve_local_path(path: str, root: Path) -> Path:
    """`data.path` as an absolute path; relative paths are taken from the workspace root."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (root / candidate).resolve()

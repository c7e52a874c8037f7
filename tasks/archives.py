"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: a member whose path is absolute or climbs
out of the target (`../`), a link (symbolic or hard), or a device file stops the extraction with
an error naming the member. Extraction goes to a staging folder that replaces the target only
when it is complete, so an error never leaves half an archive behind.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from tasks.errors import NotAnArchiveError, UnsafeArchiveError

STAGING_SUFFIX = ".extracting"


def is_archive(path: Path) -> bool:
    """True for a zip or tar (plain, gz, bz2, xz) file."""
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def check_member_name(archive: Path, name: str) -> None:
    """Refuse absolute member paths and members that climb out of the target with `..`."""
    windows = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or windows.is_absolute() or windows.drive or name.startswith("\\"):
        raise UnsafeArchiveError(f"{archive}: member '{name}' has an absolute path; nothing was extracted")
    depth = 0
    for part in name.replace("\\", "/").split("/"):
        depth += -1 if part == ".." else 0 if part in ("", ".") else 1
        if depth < 0:
            raise UnsafeArchiveError(f"{archive}: member '{name}' escapes the target directory; nothing was extracted")


def check_zip(archive: Path, members: list[zipfile.ZipInfo]) -> None:
    """Check every zip member's path and refuse symbolic links."""
    for member in members:
        check_member_name(archive, member.filename)
        if stat.S_ISLNK(member.external_attr >> 16):
            raise UnsafeArchiveError(f"{archive}: member '{member.filename}' is a link; nothing was extracted")


def check_tar(archive: Path, members: list[tarfile.TarInfo]) -> None:
    """Check every tar member's path and refuse links and special files."""
    for member in members:
        check_member_name(archive, member.name)
        if member.issym() or member.islnk():
            raise UnsafeArchiveError(f"{archive}: member '{member.name}' is a link; nothing was extracted")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{archive}: member '{member.name}' is a special file; nothing was extracted")


def extract_to(archive: Path, staging: Path) -> None:
    """Check all members of `archive`, then extract them into `staging`."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as opened:
            check_zip(archive, opened.infolist())
            opened.extractall(staging)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as opened:
            check_tar(archive, opened.getmembers())
            opened.extractall(staging, filter="data")
    else:
        raise NotAnArchiveError(f"{archive}: not a zip or tar archive (a truncated or wrong download?)")


def safe_extract(archive: Path, target: Path) -> None:
    """Extract `archive` into `target` (created; must not exist yet), all or nothing."""
    staging = target.with_name(target.name + STAGING_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        extract_to(archive, staging)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise NotAnArchiveError(f"{archive}: the archive is damaged ({error}); download it again") from error
    except (UnsafeArchiveError, NotAnArchiveError):
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(target)

"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: a member whose path is absolute or climbs
out of the target (`../`), a link (symbolic or hard), or a device file stops the extraction with
an error naming the member. So do archives over the size limits (`ArchiveLimits`, from the
`download` parameters): too many members, too many bytes once uncompressed, or a compression
ratio only a zip bomb has. The headers are checked before writing, and the bytes actually
written are counted too, so an archive whose headers lie is stopped at the limit. Extraction
goes to a staging folder that replaces the target only when it is complete, so an error never
leaves half an archive behind.

Whether a file is an archive is decided by its name (`.zip`, `.tar`, `.tar.gz`, `.tgz`, ...),
never by its content: an image that happens to carry an appended zip stays an image.
"""

from __future__ import annotations

import posixpath
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Literal

from tasks.workspace.errors import ArchiveLimitError, DownloadError, NotAnArchiveError, UnsafeArchiveError

STAGING_SUFFIX = ".extracting"
ArchiveFormat = Literal["zip", "tar"]
ARCHIVE_SUFFIXES: dict[str, ArchiveFormat] = {
    ".zip": "zip",
    ".tar": "tar",
    ".tar.gz": "tar",
    ".tgz": "tar",
    ".tar.bz2": "tar",
    ".tbz2": "tar",
    ".tbz": "tar",
    ".tar.xz": "tar",
    ".txz": "tar",
}
# A member (zip) or archive (tar) smaller than this once uncompressed is never refused for its
# ratio: a few kilobytes of blank text or zeros compress far better than any real image.
RATIO_GRACE_BYTES = 1 << 20
COPY_CHUNK_BYTES = 1 << 20
MAX_BYTES_PARAMETER = "download.max_extracted_bytes"
MAX_MEMBERS_PARAMETER = "download.max_archive_members"
MAX_RATIO_PARAMETER = "download.max_compression_ratio"
# What reading a damaged archive raises (gzip, bz2 and lzma errors are OSError subclasses or
# EOFError; zipfile raises RuntimeError for encrypted and NotImplementedError for unknown methods).
DAMAGED_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
)

CONTENT_TESTS: dict[ArchiveFormat, Callable[[Path], bool]] = {"zip": zipfile.is_zipfile, "tar": tarfile.is_tarfile}


@dataclass(frozen=True)
class ArchiveLimits:
    """Largest archive that is extracted: total uncompressed bytes, members, compression ratio."""

    max_bytes: int
    max_members: int
    max_ratio: float


def declared_format(path: Path) -> ArchiveFormat | None:
    """The archive format a file's name declares (`.zip`, `.tar.gz`, `.tgz`...), or None."""
    name = path.name.lower()
    return next((kind for suffix, kind in ARCHIVE_SUFFIXES.items() if name.endswith(suffix)), None)


def is_archive(path: Path) -> bool:
    """True for a file whose name says zip or tar (plain, gz, bz2, xz); the content is not looked at."""
    return path.is_file() and declared_format(path) is not None


def sniffed_format(path: Path) -> ArchiveFormat | None:
    """Zip or tar by content: only for a source declared to be an archive whose name does not say which."""
    return next((kind for kind, test in CONTENT_TESTS.items() if test(path)), None)


def limit_error(archive: Path, what: str, parameter: str, limit: float) -> ArchiveLimitError:
    """The error for an archive over one of its limits, naming the parameter to raise."""
    return ArchiveLimitError(
        f"{archive}: {what}, over {parameter} ({limit}); nothing was extracted. "
        f"If you trust the archive, raise {parameter} in params.yaml"
    )


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


def check_count(archive: Path, count: int, limits: ArchiveLimits) -> None:
    """Refuse an archive with more members than `limits.max_members`."""
    if count > limits.max_members:
        raise limit_error(archive, f"more than {limits.max_members} members", MAX_MEMBERS_PARAMETER, limits.max_members)


def check_total(archive: Path, total: int, limits: ArchiveLimits) -> None:
    """Refuse an archive whose members add up to more than `limits.max_bytes` uncompressed."""
    if total > limits.max_bytes:
        raise limit_error(
            archive, f"its members declare {total} bytes uncompressed", MAX_BYTES_PARAMETER, limits.max_bytes
        )


def check_ratio(archive: Path, what: str, expanded: int, packed: int, limits: ArchiveLimits) -> None:
    """Refuse `expanded` bytes stored in `packed` when the ratio is a zip bomb's (small sizes pass)."""
    if expanded > RATIO_GRACE_BYTES and expanded > limits.max_ratio * packed:
        ratio = expanded / packed if packed else float("inf")
        raise limit_error(
            archive,
            f"{what} expands {ratio:.0f} times ({packed} bytes to {expanded})",
            MAX_RATIO_PARAMETER,
            limits.max_ratio,
        )


def check_zip(archive: Path, members: list[zipfile.ZipInfo], limits: ArchiveLimits) -> None:
    """Check the member count, every member's path, type and ratio, and the total size, from the headers."""
    check_count(archive, len(members), limits)
    for member in members:
        check_member_name(archive, member.filename)
        if stat.S_ISLNK(member.external_attr >> 16):
            raise UnsafeArchiveError(f"{archive}: member '{member.filename}' is a link; nothing was extracted")
        check_ratio(archive, f"member '{member.filename}'", member.file_size, member.compress_size, limits)
    total = sum(member.file_size for member in members)
    check_total(archive, total, limits)
    # A bomb split into many members each under the grace size is caught by the whole archive's ratio.
    check_ratio(archive, "the archive", total, archive.stat().st_size, limits)


def check_tar(archive: Path, opened: tarfile.TarFile, limits: ArchiveLimits) -> list[tarfile.TarInfo]:
    """Read and check the tar headers one by one, stopping at the first member over a limit.

    Tar headers hold no compressed sizes, so the ratio is the whole archive's: declared bytes
    against the archive file's size. Reading stops as soon as a limit is passed, so a
    compressed bomb is not decompressed to its end just to be refused.
    """
    members: list[tarfile.TarInfo] = []
    total = 0
    packed = archive.stat().st_size
    for member in opened:
        members.append(member)
        check_count(archive, len(members), limits)
        check_member_name(archive, member.name)
        if member.issym() or member.islnk():
            raise UnsafeArchiveError(f"{archive}: member '{member.name}' is a link; nothing was extracted")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{archive}: member '{member.name}' is a special file; nothing was extracted")
        total += member.size
        check_total(archive, total, limits)
        check_ratio(archive, "the archive", total, packed, limits)
    return members


def member_path(archive: Path, staging: Path, name: str) -> Path | None:
    """Where member `name` goes under `staging` (None for the archive's root entry)."""
    normal = posixpath.normpath(name)
    if normal in (".", "/"):
        return None
    destination = staging.joinpath(*PurePosixPath(normal).parts)
    if not destination.resolve().is_relative_to(staging.resolve()):  # Checked names cannot; kept as a guard.
        raise UnsafeArchiveError(f"{archive}: member '{name}' escapes the target directory; nothing was extracted")
    return destination


def copy_within_budget(archive: Path, name: str, stream: IO[bytes], destination: Path, budget: int) -> int:
    """Copy `stream` to `destination`, refusing to write more than `budget` bytes; returns the bytes written.

    The headers were checked already; this counts what the decompressor really produces, so an
    archive whose headers understate its sizes is stopped at the limit.
    """
    written = 0
    with destination.open("wb") as handle:
        while chunk := stream.read(min(COPY_CHUNK_BYTES, budget - written + 1)):
            written += len(chunk)
            if written > budget:
                raise ArchiveLimitError(
                    f"{archive}: member '{name}' holds more bytes than the headers declare, and extraction "
                    f"reached {MAX_BYTES_PARAMETER}; nothing was extracted. The archive is damaged or "
                    f"forged: download it again, or raise {MAX_BYTES_PARAMETER} in params.yaml if you trust it"
                )
            handle.write(chunk)
    return written


# One member to write: its name in the archive, whether it is a folder, and how to open its bytes.
Member = tuple[str, bool, Callable[[], IO[bytes]]]


def write_members(archive: Path, members: Iterable[Member], staging: Path, limits: ArchiveLimits) -> None:
    """Write the (checked) members into `staging`, counting the bytes written against the limit."""
    written = 0
    for name, is_folder, open_member in members:
        destination = member_path(archive, staging, name)
        if destination is None:
            continue
        if is_folder:
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as stream:
            written += copy_within_budget(archive, name, stream, destination, limits.max_bytes - written)


def write_zip(archive: Path, opened: zipfile.ZipFile, staging: Path, limits: ArchiveLimits) -> None:
    """Write the (checked) zip members into `staging`."""
    members = ((member.filename, member.is_dir(), partial(opened.open, member)) for member in opened.infolist())
    write_members(archive, members, staging, limits)


def tar_member_stream(opened: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    """The bytes of a regular file of the tar (check_tar lets only regular files and folders through)."""
    stream = opened.extractfile(member)
    assert stream is not None, member.name
    return stream


def write_tar(
    archive: Path, opened: tarfile.TarFile, members: list[tarfile.TarInfo], staging: Path, limits: ArchiveLimits
) -> None:
    """Write the (checked) tar members, only files and folders, into `staging`."""
    entries = ((member.name, member.isdir(), partial(tar_member_stream, opened, member)) for member in members)
    write_members(archive, entries, staging, limits)


def extract_to(archive: Path, staging: Path, limits: ArchiveLimits) -> None:
    """Check all members of `archive` against the limits, then extract them into `staging`."""
    kind = declared_format(archive) or sniffed_format(archive)
    if kind is not None and not CONTENT_TESTS[kind](archive):
        kind = None  # The name says zip (tar) but the bytes are not one: a wrong or cut download.
    if kind == "zip":
        with zipfile.ZipFile(archive) as opened:
            check_zip(archive, opened.infolist(), limits)
            write_zip(archive, opened, staging, limits)
    elif kind == "tar":
        with tarfile.open(archive) as opened:
            members = check_tar(archive, opened, limits)
            write_tar(archive, opened, members, staging, limits)
    else:
        raise NotAnArchiveError(f"{archive}: not a zip or tar archive (a truncated or wrong download?)")


def is_write_error(error: OSError, staging: Path) -> bool:
    """True when `error` came from writing under `staging` (a full disk, no permission), not from the archive."""
    return error.filename is not None and Path(error.filename).is_relative_to(staging)


def safe_extract(archive: Path, target: Path, limits: ArchiveLimits) -> None:
    """Extract `archive` into `target` (created; must not exist yet), all or nothing.

    The format comes from the file name when it names one, else from the content (for a source
    declared to be an archive, such as `data.url`, whose name says nothing). The archive itself
    is only read, never moved or deleted.
    """
    staging = target.with_name(target.name + STAGING_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        try:
            extract_to(archive, staging, limits)
        except (UnsafeArchiveError, NotAnArchiveError):
            raise
        except OSError as error:
            if not is_write_error(error, staging):
                raise NotAnArchiveError(
                    f"{archive}: the archive is damaged or unreadable ({error}); download it again"
                ) from error
            raise DownloadError(
                f"{archive}: cannot write the extracted files to {staging.parent} ({error.strerror}); "
                "free disk space or fix the folder's permissions, then rerun"
            ) from error
        except DAMAGED_ARCHIVE_ERRORS as error:
            raise NotAnArchiveError(
                f"{archive}: the archive is damaged or unreadable ({error}); download it again"
            ) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(target)

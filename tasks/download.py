"""The `download` stage's core: bring a dataset into `data/raw/` from one of five sources.

- `url`: an http(s) archive, streamed with a progress bar, resumed with HTTP Range after an
  interruption, retried with exponential backoff on transient errors, verified against the
  required SHA-256, then safely extracted.
- `gdrive` / `kaggle`: through gdown / kagglehub (optional extras).
- `local`: an archive or a folder on disk, copied (never moved). Symbolic links in a folder are
  never followed out of it: links that leave it, broken links, link loops and links to folders
  are skipped and listed; a link to a file inside the folder is copied as a plain file.
- `synthetic`: the UTSig-shaped generator of `tasks.synthetic`.

The new raw folder is assembled beside the old one and swapped in only when complete. Archives
are extracted within the `download` parameters' size limits (`tasks.archives`); inside a folder,
a file is an archive only when its name says so (`.zip`, `.tar.gz`...), and the source files
are only read, never moved or deleted.
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote, urlparse

import requests
import tenacity
from tqdm import tqdm

from tasks.archives import ArchiveLimits, NotAnArchiveError, UnsafeArchiveError, is_archive, safe_extract
from tasks.config import DataParams, DownloadParams, SyntheticParams
from tasks.errors import DownloadError
from tasks.files import redacted_url, sha256_file, without_secrets
from tasks.paths import ProjectPaths
from tasks.synthetic import write_synthetic_dataset

PARTIAL_SUFFIX = ".part"
CORRUPT_SUFFIX = ".corrupt"
INCOMING_SUFFIX = ".incoming"
PERMANENT_HTTP_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 451})
RANGE_NOT_SATISFIABLE = 416
PARTIAL_CONTENT = 206
DEFAULT_ARCHIVE_NAME = "dataset-archive"
MANUAL_HINT = (
    "To supply the data by hand: fetch the archive (or folder) yourself, then set "
    "`data.source: local` and `data.path: <archive or folder>` in params.yaml and rerun `dvc repro`."
)
EXTRA_HINT = "Install the extra with: .venv/bin/pip install -e '.[{extra}]' (or: make venv EXTRAS=cpu,dev,{extra})."


class TransientDownloadError(RuntimeError):
    """A failure worth retrying: a cut connection, a timeout, a 5xx or 429 answer."""


TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    TransientDownloadError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently an HTTP download is retried."""

    retries: int
    backoff_seconds: float
    timeout_seconds: float
    chunk_bytes: int

    @classmethod
    def from_params(cls, params: DownloadParams) -> RetryPolicy:
        return cls(params.retries, params.backoff_seconds, params.timeout_seconds, params.chunk_bytes)


def archive_name(url: str) -> str:
    """The file name an URL's archive is saved under."""
    name = Path(unquote(urlparse(url).path)).name
    return name or DEFAULT_ARCHIVE_NAME


def expected_total(response: requests.Response, offset: int) -> int | None:
    """Full size of the file being fetched, from Content-Length (plus the resume offset)."""
    length = response.headers.get("Content-Length")
    return int(length) + offset if length and length.isdigit() else None


def resume_offset(response: requests.Response, offset: int) -> int:
    """Where the body of `response` starts: `offset` for a matching 206, 0 when the server restarts."""
    if response.status_code != PARTIAL_CONTENT:
        return 0
    content_range = response.headers.get("Content-Range", "")
    if not content_range.startswith(f"bytes {offset}-"):
        raise TransientDownloadError(f"server answered range '{content_range}' to a request from byte {offset}")
    return offset


def fetch_once(session: requests.Session, url: str, partial: Path, policy: RetryPolicy, show_progress: bool) -> None:
    """One attempt: request the rest of `partial` and append it; raise on short or failed reads."""
    offset = partial.stat().st_size if partial.exists() else 0
    # Identity encoding: byte offsets and the checksum refer to the file as stored, never a
    # transparently decompressed stream (a server may label a .tar.gz as gzip-encoded).
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    with session.get(url, stream=True, timeout=policy.timeout_seconds, headers=headers) as response:
        if response.status_code == RANGE_NOT_SATISFIABLE and offset:
            return  # The partial file is already complete; the checksum decides.
        if response.status_code in PERMANENT_HTTP_STATUSES:
            raise DownloadError(
                f"{redacted_url(url)}: the server answered HTTP {response.status_code} {response.reason}. {MANUAL_HINT}"
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientDownloadError(f"HTTP {response.status_code} {response.reason}")
        response.raise_for_status()
        start = resume_offset(response, offset)
        total = expected_total(response, start)
        written = start
        with (
            partial.open("ab" if start else "wb") as handle,
            tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=partial.name, disable=not show_progress
            ) as progress,
        ):
            for chunk in response.iter_content(chunk_size=policy.chunk_bytes):
                handle.write(chunk)
                written += len(chunk)
                progress.update(len(chunk))
    if total is not None and written < total:
        raise TransientDownloadError(f"connection closed after {written} of {total} bytes")


def download_url(
    url: str,
    destination: Path,
    expected_sha256: str,
    policy: RetryPolicy,
    show_progress: bool = True,
    session: requests.Session | None = None,
) -> Path:
    """Download `url` to `destination`, resuming and retrying, and verify its SHA-256.

    A file already at `destination` with the right checksum is reused. A wrong checksum keeps
    the bytes as `<destination>.corrupt` for inspection and raises DownloadError.
    """
    expected = expected_sha256.lower()
    if destination.is_file() and sha256_file(destination) == expected:
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + PARTIAL_SUFFIX)
    session = session or requests.Session()
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.retries + 1),
        wait=tenacity.wait_exponential(multiplier=policy.backoff_seconds, exp_base=2),
        retry=tenacity.retry_if_exception_type(TRANSIENT_ERRORS),
        reraise=True,
    )
    try:
        retrying(fetch_once, session, url, partial, policy, show_progress)
    except TRANSIENT_ERRORS as error:
        raise DownloadError(
            f"{redacted_url(url)}: download failed after {policy.retries + 1} attempts "
            f"({type(error).__name__}: {without_secrets(str(error), url)}). "
            f"Check the address and your connection; the partial file {partial} is kept and the "
            f"next run resumes it. {MANUAL_HINT}"
        ) from error
    actual = sha256_file(partial)
    if actual != expected:
        corrupt = destination.with_name(destination.name + CORRUPT_SUFFIX)
        partial.replace(corrupt)
        raise DownloadError(
            f"{redacted_url(url)}: checksum mismatch: expected sha256 {expected}, got {actual}. The bytes were kept "
            f"in {corrupt}. If the archive is the right one, update data.sha256; otherwise rerun to "
            f"download it again. {MANUAL_HINT}"
        )
    partial.replace(destination)
    return destination


def import_extra(module_name: str, extra: str, source: str) -> ModuleType:
    """Import an optional dependency, or explain which extra installs it."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise DownloadError(
            f"data.source '{source}' needs the Python package '{module_name}', which is not installed. "
            + EXTRA_HINT.format(extra=extra)
        ) from error


def fetch_gdrive(file_or_folder_id: str, download_dir: Path) -> Path:
    """Fetch a public Google Drive folder (or, failing that, file) with gdown; returns its path."""
    gdown = import_extra("gdown", "gdrive", "gdrive")
    target = download_dir / f"gdrive-{file_or_folder_id}"
    target.mkdir(parents=True, exist_ok=True)
    problems = []
    try:
        files = gdown.download_folder(id=file_or_folder_id, output=str(target), quiet=False, resume=True)
        if files:
            return target
        problems.append("as a folder: nothing was downloaded")
    except Exception as error:  # gdown raises many types; each is reported below.
        problems.append(f"as a folder: {type(error).__name__}: {error}")
    try:
        path = gdown.download(id=file_or_folder_id, output=str(target) + "/", quiet=False, resume=True)
        if path:
            return Path(path)
        problems.append("as a file: nothing was downloaded")
    except Exception as error:
        problems.append(f"as a file: {type(error).__name__}: {error}")
    raise DownloadError(
        f"Google Drive id {file_or_folder_id} could not be fetched ({'; '.join(problems)}). {MANUAL_HINT}"
    )


def fetch_kaggle(handle: str) -> Path:
    """Fetch a Kaggle dataset with kagglehub (which caches it); returns the local folder."""
    kagglehub = import_extra("kagglehub", "kaggle", "kaggle")
    try:
        return Path(kagglehub.dataset_download(handle))
    except Exception as error:  # kagglehub raises many types; the message keeps the original.
        raise DownloadError(
            f"Kaggle dataset {handle} could not be fetched ({type(error).__name__}: {error}). "
            f"Check the handle and your Kaggle credentials (~/.kaggle/kaggle.json). {MANUAL_HINT}"
        ) from error


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


def archive_limits(download: DownloadParams) -> ArchiveLimits:
    """The archive size limits of the `download` parameters."""
    return ArchiveLimits(download.max_extracted_bytes, download.max_archive_members, download.max_compression_ratio)


def fill_incoming(
    data: DataParams,
    download: DownloadParams,
    synthetic: SyntheticParams,
    paths: ProjectPaths,
    incoming: Path,
    show_progress: bool,
) -> tuple[str, list[SkippedEntry]]:
    """Put the dataset named by `data.source` into `incoming`; returns where from, and what was skipped."""
    limits = archive_limits(download)
    if data.source == "synthetic":
        incoming.mkdir(parents=True)
        count = write_synthetic_dataset(synthetic, incoming)
        return f"synthetic generator (seed {synthetic.seed}, {count} images)", []
    if data.source == "url":
        assert data.url and data.sha256  # guaranteed by DataParams validation
        archive = download_url(
            data.url,
            paths.downloads_dir / archive_name(data.url),
            data.sha256,
            RetryPolicy.from_params(download),
            show_progress,
        )
        safe_extract(archive, incoming, limits)
        return redacted_url(data.url), []
    if data.source == "local":
        assert data.path
        skipped = materialise(resolve_local_path(data.path, paths.root), incoming, data.sha256, limits)
        return f"local {data.path}", skipped
    if data.source == "gdrive":
        assert data.gdrive_id
        skipped = materialise(fetch_gdrive(data.gdrive_id, paths.downloads_dir), incoming, data.sha256, limits)
        return f"gdrive {data.gdrive_id}", skipped
    assert data.kaggle_handle
    skipped = materialise(fetch_kaggle(data.kaggle_handle), incoming, data.sha256, limits)
    return f"kaggle {data.kaggle_handle}", skipped


@dataclass(frozen=True)
class DownloadSummary:
    """What the download stage put into `data/raw`, and what of a source folder it left out."""

    source: str
    files: int
    bytes: int
    skipped: tuple[SkippedEntry, ...] = ()


def fetch_dataset(
    data: DataParams,
    download: DownloadParams,
    synthetic: SyntheticParams,
    paths: ProjectPaths,
    show_progress: bool = True,
) -> DownloadSummary:
    """Fetch the dataset into `paths.raw_dir`, replacing it only once the new copy is complete."""
    incoming = paths.raw_dir.with_name(paths.raw_dir.name + INCOMING_SUFFIX)
    shutil.rmtree(incoming, ignore_errors=True)
    try:
        origin, skipped = fill_incoming(data, download, synthetic, paths, incoming, show_progress)
    except (UnsafeArchiveError, NotAnArchiveError) as error:
        shutil.rmtree(incoming, ignore_errors=True)
        raise DownloadError(f"{error}. {MANUAL_HINT}") from error
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    sizes = [path.stat().st_size for path in incoming.rglob("*") if path.is_file()]
    shutil.rmtree(paths.raw_dir, ignore_errors=True)
    incoming.rename(paths.raw_dir)
    return DownloadSummary(origin, len(sizes), sum(sizes), tuple(skipped))

"""The `download` stage's core: bring a dataset into `data/raw/` from one of five sources.

- `url`: an http(s) archive, streamed with a progress bar, resumed with HTTP Range after an
  interruption, retried with exponential backoff on transient errors, verified against the
  required SHA-256 (`tasks.data.http_download`), then safely extracted.
- `gdrive` / `kaggle`: through gdown / kagglehub (optional extras).
- `local`: an archive or a folder on disk, copied (never moved). Symbolic links in a folder are
  never followed out of it: links that leave it, broken links, link loops and links to folders
  are skipped and listed; a link to a file inside the folder is copied as a plain file
  (`tasks.data.source_copy`).
- `synthetic`: the UTSig-shaped generator of `tasks.data.synthetic`.

The new raw folder is assembled beside the old one and swapped in only when complete. Archives
are extracted within the `download` parameters' size limits (`tasks.data.archives`); inside a folder,
a file is an archive only when its name says so (`.zip`, `.tar.gz`...), and the source files
are only read, never moved or deleted.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from tasks.data.archives import ArchiveLimits, NotAnArchiveError, UnsafeArchiveError, safe_extract
from tasks.data.http_download import MANUAL_HINT, RetryPolicy, archive_name, download_url
from tasks.data.source_copy import SkippedEntry, materialise, resolve_local_path
from tasks.data.synthetic import write_synthetic_dataset
from tasks.workspace.errors import DownloadError
from tasks.workspace.files import redacted_url
from tasks.workspace.params_data import DataParams, DownloadParams, SyntheticParams
from tasks.workspace.paths import ProjectPaths

INCOMING_SUFFIX = ".incoming"
EXTRA_HINT = "Install the extra with: .venv/bin/pip install -e '.[{extra}]' (or: make venv EXTRAS=cpu,dev,{extra})."


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

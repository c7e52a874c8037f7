"""Downloading a dataset archive over HTTP(S): streamed with a progress bar, resumed with HTTP Range after
an interruption, retried with exponential backoff on transient errors, and verified against the
required SHA-256 (the `url` source of the `download` stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
import tenacity
from tqdm import tqdm

from tasks.workspace.errors import DownloadError
from tasks.workspace.files import redacted_url, sha256_file, without_secrets
from tasks.workspace.params_data import DownloadParams

PARTIAL_SUFFIX = ".part"
CORRUPT_SUFFIX = ".corrupt"
PERMANENT_HTTP_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 451})
RANGE_NOT_SATISFIABLE = 416
PARTIAL_CONTENT = 206
DEFAULT_ARCHIVE_NAME = "dataset-archive"
MANUAL_HINT = (
    "To supply the data by hand: fetch the archive (or folder) yourself, then set "
    "`data.source: local` and `data.path: <archive or folder>` in params.yaml and rerun `dvc repro`."
)


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

"""Small file helpers shared by every stage: hashing, JSON / CSV written the same way each time, secret
files private from their creation, files replaced atomically, and URLs safe to log."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, overload
from urllib.parse import urlsplit, urlunsplit

HASH_BLOCK_BYTES = 1 << 20
# The date every entry of a rewritten zip carries (the earliest a zip can hold), in place of the
# moment it was written: Keras' .keras archives date each entry, so two saves of the same model
# differ, and DVC, which records every output's hash in dvc.lock, sees a change. (NumPy 2.4's .npz
# entries are undated already.)
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# What reading a missing, empty, truncated or foreign .npz raises (np.load, then an array by name).
UNREADABLE_NPZ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError)
PARTIAL_PREFIX = "partial-"  # a file being rewritten, renamed over the original when complete
PRIVATE_FILE_MODE = 0o600  # secrets: readable and writable by their owner only
REDACTED = "***"  # what replaces a URL's credentials and query in logs
REDACTED_SCHEMES = ("http", "https")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


@overload
def json_ready(content: dict[str, Any]) -> dict[str, object]: ...
@overload
def json_ready(content: object) -> object: ...
def json_ready(content: object) -> object:
    """`content` with NaN and infinities replaced by None (JSON has no such numbers)."""
    if isinstance(content, float) and not math.isfinite(content):
        return None
    if isinstance(content, dict):
        return {key: json_ready(value) for key, value in content.items()}
    if isinstance(content, list | tuple):
        return [json_ready(value) for value in content]
    return content


def save_npz(arrays: Mapping[str, Any], path: Path) -> None:
    """Write named arrays to an uncompressed .npz, atomically (a temporary name, then a rename). No
    pickled objects; NumPy 2.4's entries are undated, so equal arrays give equal bytes (DVC hashes them)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{PARTIAL_PREFIX}{path.name}")
    with temporary.open("wb") as handle:
        np.savez(handle, **arrays)
    temporary.replace(path)


def write_json(path: Path, content: object) -> None:
    """Write JSON with sorted keys and a final newline, so equal content gives equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_ready(content), indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


def write_metrics(
    headline_file: Path, details_file: Path, metrics: Mapping[str, object], headline: Iterable[str]
) -> None:
    """Write every number to `details_file` and the `headline` keys alone to `headline_file`.

    DVC shows the headline files (`metrics:` in dvc.yaml) as one table with a column per key of
    every file; the details stay in a report beside them, so `dvc metrics show` fits a terminal.
    """
    write_json(details_file, metrics)
    write_json(headline_file, {key: metrics.get(key) for key in headline})


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict[str, object]]) -> None:
    """Write rows as CSV with a header and Unix line endings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def undate_zip(path: Path, rewrite: Mapping[str, Callable[[bytes], bytes]] | None = None) -> None:
    """Rewrite the zip archive at `path` with every entry dated `ZIP_EPOCH`, so that equal content
    gives equal bytes; names, order, compression and permissions stay. `rewrite` maps an entry name
    to a function of its bytes (e.g. to drop a save date from a metadata file). The new archive is
    written beside the old one and renamed over it, so a failure leaves the original in place."""
    rewrite = rewrite or {}
    temporary = path.with_name(f"{PARTIAL_PREFIX}{path.name}")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(temporary, "w") as target:
        for entry in source.infolist():
            dated = zipfile.ZipInfo(entry.filename, date_time=ZIP_EPOCH)
            dated.compress_type, dated.external_attr = entry.compress_type, entry.external_attr
            if entry.filename in rewrite:
                target.writestr(dated, rewrite[entry.filename](source.read(entry)))
                continue
            with source.open(entry) as reader, target.open(dated, "w", force_zip64=True) as writer:
                shutil.copyfileobj(reader, writer, HASH_BLOCK_BYTES)
    temporary.replace(path)


def redacted_url(value: str) -> str:
    """`value` with the credentials and query of an http(s) URL replaced by `***`, so it can be logged
    (an archive URL may carry a user and password or a signed token); any other text unchanged."""
    parts = urlsplit(value)
    if parts.scheme.lower() not in REDACTED_SCHEMES or not parts.netloc:
        return value
    # The host and port as written (a malformed port is kept, not parsed); the credentials dropped.
    netloc = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc:
        netloc = f"{REDACTED}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, REDACTED if parts.query else "", ""))


def write_private_file(path: Path, text: str) -> None:
    """Create `path` holding `text`, readable by its owner only from the moment it exists (created
    with mode 0600, never written at the umask's mode and narrowed afterwards). An existing file is an
    error: a secret is never overwritten."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def without_secrets(text: str, url: str) -> str:
    """`text` (an HTTP library's error message, say) with the query and the password of `url` replaced
    by `***` wherever they appear in it (not the user name: short and not secret, replacing it would
    garble the message)."""
    parts = urlsplit(url)
    for secret in (parts.query, parts.password):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def replace_atomically(path: Path, content: str | bytes) -> None:
    """Write `content` (text as UTF-8, or bytes as they are) to a temporary file beside `path`, then
    rename it over `path` (keeping its mode), so readers see the old file or the new one, never a partial write."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below; the name must outlive it for the rename
        "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    temporary = Path(handle.name)
    try:
        with handle:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.chmod(path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)

"""Tests of `tasks.data.http_download` (HTTP download with resume, retries and checksum) and `tasks.data.download`
(`fetch_dataset`).

Every HTTP test talks to `tests.support.http_server.LocalHTTPServer` on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from tasks.data.download import fetch_dataset
from tasks.data.http_download import CORRUPT_SUFFIX, PARTIAL_SUFFIX, RetryPolicy, download_url
from tasks.workspace.errors import DownloadError
from tasks.workspace.params_data import DataParams, DownloadParams, SyntheticParams
from tasks.workspace.paths import ProjectPaths
from tests.support.http_server import LocalHTTPServer, parse_range

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable modulo 256
CHUNK = 256
FAST_DOWNLOAD = DownloadParams(
    retries=2,
    backoff_seconds=0,
    timeout_seconds=5,
    chunk_bytes=CHUNK,
    max_extracted_bytes=10**6,
    max_archive_members=1000,
    max_compression_ratio=200,
)
SYNTHETIC = SyntheticParams(
    seed=0,
    writers=1,
    genuine_per_writer=1,
    skilled_per_writer=0,
    simple_per_writer=0,
    opposite_per_writer=0,
    width=32,
    height=32,
)
DATASET = {
    "UTSig/Genuine/1/1.tif": b"genuine one" * 50,
    "UTSig/Genuine/1/2.tif": b"genuine two" * 70,
    "UTSig/Forgery/Skilled/1/1.tif": b"skilled" * 30,
    "UTSig/readme.txt": b"a tiny dataset\n",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def policy(retries: int = 2, chunk_bytes: int = CHUNK) -> RetryPolicy:
    return RetryPolicy(retries=retries, backoff_seconds=0, timeout_seconds=5, chunk_bytes=chunk_bytes)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip holding `members` under exactly the given names (no normalisation)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(zipfile.ZipInfo(name), content)
    return buffer.getvalue()


def tar_gz_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A tar.gz holding `members` (regular files) and `symlinks` (name -> link target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


def snapshot(folder: Path, exclude: Path | None = None) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under `folder`, by relative path, optionally skipping a subtree."""
    result: dict[str, bytes | None] = {}
    for path in sorted(folder.rglob("*")):
        if exclude is not None and (path == exclude or exclude in path.parents):
            continue
        result[path.relative_to(folder).as_posix()] = path.read_bytes() if path.is_file() else None
    return result


def files_of(folder: Path) -> dict[str, bytes]:
    return {key: value for key, value in snapshot(folder).items() if value is not None}


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep requests off any proxy named in the environment: the test server is on 127.0.0.1 only."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def server() -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer({"/data.bin": PAYLOAD}) as running:
        yield running


@pytest.fixture
def paths(tmp_path: Path) -> ProjectPaths:
    return ProjectPaths.from_root(tmp_path / "project")


def url_params(url: str, sha256: str) -> DataParams:
    return DataParams(source="url", layout="folder", url=url, sha256=sha256)


class PartialSizeSpy(requests.Session):
    """A session that records the size of the `.part` file on disk when each request is sent."""

    def __init__(self, partial: Path) -> None:
        super().__init__()
        self.partial = partial
        self.sizes: list[int | None] = []

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sizes.append(self.partial.stat().st_size if self.partial.exists() else None)
        return super().get(url, **kwargs)


# --- The test server itself -------------------------------------------------------------------------------------


def test_server_answers_ranges_with_206_and_416(server: LocalHTTPServer) -> None:
    whole = requests.get(server.url("/data.bin"), timeout=5)
    part = requests.get(server.url("/data.bin"), headers={"Range": "bytes=100-"}, timeout=5)
    bounded = requests.get(server.url("/data.bin"), headers={"Range": "bytes=10-19"}, timeout=5)
    past_end = requests.get(server.url("/data.bin"), headers={"Range": f"bytes={len(PAYLOAD)}-"}, timeout=5)
    missing = requests.get(server.url("/nothing"), timeout=5)

    assert (whole.status_code, whole.content) == (200, PAYLOAD)
    assert (part.status_code, part.content) == (206, PAYLOAD[100:])
    assert part.headers["Content-Range"] == f"bytes 100-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"
    assert (bounded.status_code, bounded.content) == (206, PAYLOAD[10:20])
    assert past_end.status_code == 416
    assert past_end.headers["Content-Range"] == f"bytes */{len(PAYLOAD)}"
    assert missing.status_code == 404
    assert [(r.path, r.range) for r in server.requests] == [
        ("/data.bin", None),
        ("/data.bin", "bytes=100-"),
        ("/data.bin", "bytes=10-19"),
        ("/data.bin", f"bytes={len(PAYLOAD)}-"),
        ("/nothing", None),
    ]


def test_server_parse_range() -> None:
    assert parse_range("bytes=0-", 10) == (0, 10)
    assert parse_range("bytes=-3", 10) == (7, 10)
    assert parse_range("bytes=2-100", 10) == (2, 10)
    assert parse_range("bytes=10-", 10) == "unsatisfiable"
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=5-2", 10) is None


def test_server_cut_sends_full_length_but_part_of_the_body(server: LocalHTTPServer) -> None:
    server.cut("/data.bin", times=1, after_bytes=1000)

    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(server.url("/data.bin"), timeout=5)
    again = requests.get(server.url("/data.bin"), timeout=5)

    assert again.content == PAYLOAD


def test_server_shuts_down_and_refuses_use_outside_its_block() -> None:
    server = LocalHTTPServer({"/x": b"x"})
    with pytest.raises(RuntimeError, match="not running"):
        server.url("/x")
    with server:
        port = server.port
    assert not any(thread.name == "LocalHTTPServer" for thread in threading.enumerate())
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/x", timeout=5)


# --- download_url ------------------------------------------------------------------------------------------------


def test_download_writes_verified_file_without_part(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "downloads" / "data.bin"

    result = download_url(server.url("/data.bin"), destination, sha(PAYLOAD), policy(), show_progress=False)

    assert result == destination
    assert destination.read_bytes() == PAYLOAD
    assert not destination.with_name("data.bin" + PARTIAL_SUFFIX).exists()
    assert [(r.path, r.range) for r in server.requests] == [("/data.bin", None)]


def test_download_accepts_uppercase_checksum(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "data.bin"

    download_url(server.url("/data.bin"), destination, sha(PAYLOAD).upper(), policy(), show_progress=False)

    assert destination.read_bytes() == PAYLOAD


def test_download_reuses_complete_file_without_a_request(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "data.bin"
    destination.write_bytes(PAYLOAD)

    result = download_url(server.url("/data.bin"), destination, sha(PAYLOAD), policy(), show_progress=False)

    assert result == destination
    assert destination.read_bytes() == PAYLOAD
    assert server.requests == []


def test_download_replaces_a_wrong_existing_file(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "data.bin"
    destination.write_bytes(b"stale")

    download_url(server.url("/data.bin"), destination, sha(PAYLOAD), policy(), show_progress=False)

    assert destination.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_download_resumes_after_cut_connection(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "data.bin"
    partial = destination.with_name("data.bin" + PARTIAL_SUFFIX)
    server.cut("/data.bin", times=1, after_bytes=3000)

    with PartialSizeSpy(partial) as session:
        download_url(server.url("/data.bin"), destination, sha(PAYLOAD), policy(), show_progress=False, session=session)

    requests_made = server.requests_for("/data.bin")
    assert len(requests_made) == 2
    assert requests_made[0].range is None
    on_disk = session.sizes[1]
    assert on_disk is not None and 0 < on_disk <= 3000
    assert requests_made[1].range == f"bytes={on_disk}-"
    assert destination.read_bytes() == PAYLOAD
    assert sha(destination.read_bytes()) == sha(PAYLOAD)
    assert not partial.exists()


class HeaderSpy(requests.Session):
    """A session that records the headers of each request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[str, str]] = []

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append(dict(kwargs.get("headers") or {}))
        return super().get(url, **kwargs)


def test_download_asks_for_the_stored_bytes_not_a_decompressed_stream(server: LocalHTTPServer, tmp_path: Path) -> None:
    server.cut("/data.bin", times=1, after_bytes=3000)
    with HeaderSpy() as session:
        download_url(
            server.url("/data.bin"), tmp_path / "d.bin", sha(PAYLOAD), policy(), show_progress=False, session=session
        )
    assert len(session.sent) == 2
    assert all(headers["Accept-Encoding"] == "identity" for headers in session.sent)


def test_download_failed_run_keeps_part_and_next_run_resumes_from_it(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "data.bin"
    partial = destination.with_name("data.bin" + PARTIAL_SUFFIX)
    server.cut("/data.bin", times=1, after_bytes=2 * CHUNK * 5)

    with pytest.raises(DownloadError, match="after 1 attempts"):
        download_url(server.url("/data.bin"), destination, sha(PAYLOAD), policy(retries=0), show_progress=False)
    kept = partial.stat().st_size
    assert 0 < kept < len(PAYLOAD)
    assert partial.read_bytes() == PAYLOAD[:kept]
    assert not destination.exists()

    download_url(server.url("/data.bin"), destination, sha(PAYLOAD), policy(retries=0), show_progress=False)

    assert server.requests_for("/data.bin")[1].range == f"bytes={kept}-"
    assert destination.read_bytes() == PAYLOAD
    assert not partial.exists()


def test_download_of_complete_part_file_gets_416_and_is_kept(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "data.bin"
    destination.with_name("data.bin" + PARTIAL_SUFFIX).write_bytes(PAYLOAD)

    download_url(server.url("/data.bin"), destination, sha(PAYLOAD), policy(retries=0), show_progress=False)

    assert [r.range for r in server.requests] == [f"bytes={len(PAYLOAD)}-"]
    assert destination.read_bytes() == PAYLOAD


def test_download_restarts_from_zero_when_server_ignores_range(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "data.bin"
    server.ignore_range("/data.bin")
    server.cut("/data.bin", times=1, after_bytes=3000)

    download_url(server.url("/data.bin"), destination, sha(PAYLOAD), policy(), show_progress=False)

    requests_made = server.requests_for("/data.bin")
    assert len(requests_made) == 2
    assert requests_made[1].range is not None and requests_made[1].range.startswith("bytes=")
    assert destination.read_bytes() == PAYLOAD
    assert not destination.with_name("data.bin" + PARTIAL_SUFFIX).exists()


def test_download_retries_transient_5xx_then_succeeds(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "data.bin"
    server.fail("/data.bin", times=2, status=503)

    download_url(server.url("/data.bin"), destination, sha(PAYLOAD), policy(retries=2), show_progress=False)

    assert len(server.requests_for("/data.bin")) == 3
    assert destination.read_bytes() == PAYLOAD


def test_download_retries_429(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "data.bin"
    server.fail("/data.bin", times=1, status=429)

    download_url(server.url("/data.bin"), destination, sha(PAYLOAD), policy(retries=1), show_progress=False)

    assert len(server.requests) == 2
    assert destination.read_bytes() == PAYLOAD


def test_download_gives_up_after_retries(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "data.bin"
    server.fail("/data.bin", times=10, status=500)

    with pytest.raises(DownloadError) as raised:
        download_url(server.url("/data.bin"), destination, sha(PAYLOAD), policy(retries=2), show_progress=False)

    message = str(raised.value)
    assert "after 3 attempts" in message
    assert "HTTP 500" in message
    assert "data.source: local" in message
    assert len(server.requests) == 3
    assert not destination.exists()


def test_download_checksum_mismatch_keeps_corrupt_bytes(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "data.bin"
    expected = sha(b"something else")

    with pytest.raises(DownloadError) as raised:
        download_url(server.url("/data.bin"), destination, expected, policy(), show_progress=False)

    message = str(raised.value)
    corrupt = destination.with_name("data.bin" + CORRUPT_SUFFIX)
    assert expected in message
    assert sha(PAYLOAD) in message
    assert str(corrupt) in message
    assert corrupt.read_bytes() == PAYLOAD
    assert not destination.exists()
    assert not destination.with_name("data.bin" + PARTIAL_SUFFIX).exists()


def test_download_404_fails_at_once_with_manual_hint(server: LocalHTTPServer, tmp_path: Path) -> None:
    destination = tmp_path / "missing.zip"

    with pytest.raises(DownloadError) as raised:
        download_url(server.url("/missing.zip"), destination, sha(PAYLOAD), policy(retries=3), show_progress=False)

    message = str(raised.value)
    assert "404" in message
    assert "by hand" in message
    assert "data.source: local" in message and "data.path" in message
    assert len(server.requests) == 1
    assert not destination.exists()


def test_download_connection_refused(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/data.bin"

    with pytest.raises(DownloadError) as raised:
        download_url(url, tmp_path / "data.bin", sha(PAYLOAD), policy(retries=1), show_progress=False)

    message = str(raised.value)
    assert "after 2 attempts" in message
    assert "ConnectionError" in message
    assert url in message
    assert not (tmp_path / "data.bin").exists()


# --- fetch_dataset: url ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "build"), [("ds.zip", zip_bytes), ("ds.tar.gz", tar_gz_bytes)])
def test_fetch_url_archive_populates_raw(name: str, build: Any, paths: ProjectPaths) -> None:
    archive = build(DATASET)
    with LocalHTTPServer({f"/{name}": archive}) as server:
        url = server.url(f"/{name}")
        summary = fetch_dataset(url_params(url, sha(archive)), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert files_of(paths.raw_dir) == DATASET
    assert summary.source == url
    assert summary.files == len(DATASET)
    assert summary.bytes == sum(len(content) for content in DATASET.values())
    assert (paths.downloads_dir / name).read_bytes() == archive
    assert sorted(p.name for p in paths.data_dir.iterdir()) == ["downloads", "raw"]


def test_fetch_url_replaces_existing_raw(paths: ProjectPaths) -> None:
    paths.raw_dir.mkdir(parents=True)
    (paths.raw_dir / "old.txt").write_bytes(b"old")
    archive = zip_bytes(DATASET)
    with LocalHTTPServer({"/ds.zip": archive}) as server:
        fetch_dataset(
            url_params(server.url("/ds.zip"), sha(archive)), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False
        )

    assert files_of(paths.raw_dir) == DATASET


def test_fetch_url_checksum_mismatch_leaves_raw_untouched(paths: ProjectPaths) -> None:
    paths.raw_dir.mkdir(parents=True)
    (paths.raw_dir / "keep.txt").write_bytes(b"keep")
    archive = zip_bytes(DATASET)
    with LocalHTTPServer({"/ds.zip": archive}) as server, pytest.raises(DownloadError, match="checksum mismatch"):
        fetch_dataset(
            url_params(server.url("/ds.zip"), sha(b"other")), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False
        )

    assert files_of(paths.raw_dir) == {"keep.txt": b"keep"}
    assert (paths.downloads_dir / ("ds.zip" + CORRUPT_SUFFIX)).read_bytes() == archive


UNSAFE_ARCHIVES = [
    pytest.param("ds.zip", zip_bytes({"UTSig/ok.txt": b"ok", "../evil.txt": b"evil"}), "../evil.txt", id="zip-dotdot"),
    pytest.param("ds.zip", zip_bytes({"UTSig/ok.txt": b"ok", "/etc/x": b"evil"}), "/etc/x", id="zip-absolute"),
    pytest.param(
        "ds.tar.gz", tar_gz_bytes({"UTSig/ok.txt": b"ok", "../evil.txt": b"evil"}), "../evil.txt", id="tar-dotdot"
    ),
    pytest.param("ds.tar.gz", tar_gz_bytes({"UTSig/ok.txt": b"ok", "/etc/x": b"evil"}), "/etc/x", id="tar-absolute"),
    pytest.param(
        "ds.tar.gz",
        tar_gz_bytes({"UTSig/ok.txt": b"ok"}, symlinks={"UTSig/link": "../../evil.txt"}),
        "UTSig/link",
        id="tar-symlink",
    ),
]


@pytest.mark.parametrize(("name", "archive", "member"), UNSAFE_ARCHIVES)
def test_fetch_url_unsafe_archive_is_refused(
    name: str, archive: bytes, member: str, paths: ProjectPaths, tmp_path: Path
) -> None:
    paths.raw_dir.mkdir(parents=True)
    (paths.raw_dir / "keep.txt").write_bytes(b"previous dataset")
    before = snapshot(tmp_path, exclude=paths.downloads_dir)

    with LocalHTTPServer({f"/{name}": archive}) as server, pytest.raises(DownloadError) as raised:
        fetch_dataset(
            url_params(server.url(f"/{name}"), sha(archive)), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False
        )

    assert f"'{member}'" in str(raised.value)
    assert snapshot(tmp_path, exclude=paths.downloads_dir) == before
    assert not (paths.data_dir / "evil.txt").exists()
    assert not (paths.root / "evil.txt").exists()
    assert sorted(p.name for p in paths.data_dir.iterdir()) == ["downloads", "raw"]


# --- fetch_dataset: local ----------------------------------------------------------------------------------------


def local_params(path: Path | str, sha256: str | None = None) -> DataParams:
    return DataParams(source="local", layout="folder", path=str(path), sha256=sha256)


def test_fetch_local_folder_copies_and_never_touches_source(paths: ProjectPaths, tmp_path: Path) -> None:
    source = tmp_path / "source"
    for name, content in DATASET.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(content)
    (source / "extra.zip").write_bytes(zip_bytes({"inner/a.txt": b"inner"}))
    (source / "leftover.zip.part").write_bytes(b"half")
    before = snapshot(source)

    summary = fetch_dataset(local_params(source), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert snapshot(source) == before
    assert files_of(paths.raw_dir) == {**DATASET, "extra/inner/a.txt": b"inner"}
    assert summary.source == f"local {source}"
    assert summary.files == len(DATASET) + 1


def test_fetch_local_folder_keeps_an_archive_beside_its_extracted_folder(paths: ProjectPaths, tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "UTSig").mkdir(parents=True)
    (source / "UTSig" / "a.txt").write_bytes(b"extracted")
    (source / "UTSig.zip").write_bytes(zip_bytes({"a.txt": b"packed"}))

    fetch_dataset(local_params(source), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert files_of(paths.raw_dir) == {"UTSig/a.txt": b"extracted", "UTSig.zip": zip_bytes({"a.txt": b"packed"})}


def test_fetch_local_archive_extracts_and_never_touches_source(paths: ProjectPaths) -> None:
    archive_bytes = tar_gz_bytes(DATASET)
    paths.root.mkdir(parents=True)
    archive = paths.root / "incoming" / "ds.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(archive_bytes)
    before = snapshot(archive.parent)

    fetch_dataset(
        local_params("incoming/ds.tar.gz", sha(archive_bytes)), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False
    )

    assert snapshot(archive.parent) == before
    assert archive.read_bytes() == archive_bytes
    assert files_of(paths.raw_dir) == DATASET


def test_fetch_local_archive_with_wrong_checksum(paths: ProjectPaths, tmp_path: Path) -> None:
    archive = tmp_path / "ds.zip"
    archive.write_bytes(zip_bytes(DATASET))

    with pytest.raises(DownloadError, match="checksum"):
        fetch_dataset(local_params(archive, sha(b"other")), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert not paths.raw_dir.exists()


def test_fetch_local_missing_path(paths: ProjectPaths, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ds.zip"

    with pytest.raises(DownloadError) as raised:
        fetch_dataset(local_params(missing), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    message = str(raised.value)
    assert str(missing) in message
    assert "no such file or folder" in message
    assert "data.path" in message
    assert not paths.raw_dir.exists()


def test_fetch_local_file_that_is_not_an_archive(paths: ProjectPaths, tmp_path: Path) -> None:
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("just text\n")

    with pytest.raises(DownloadError, match="not a zip or tar archive"):
        fetch_dataset(local_params(not_archive), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert not_archive.read_text() == "just text\n"
    assert not paths.raw_dir.exists()
    assert not paths.raw_dir.with_name("raw.incoming").exists()


# --- fetch_dataset: gdrive and kaggle ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "module", "extra"),
    [
        (DataParams(source="gdrive", layout="folder", gdrive_id="abc123"), "gdown", "gdrive"),
        (DataParams(source="kaggle", layout="folder", kaggle_handle="owner/set"), "kagglehub", "kaggle"),
    ],
)
def test_fetch_optional_source_without_its_package(
    params: DataParams, module: str, extra: str, paths: ProjectPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)

    with pytest.raises(DownloadError) as raised:
        fetch_dataset(params, FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    message = str(raised.value)
    assert f"'{module}'" in message
    assert f".[{extra}]" in message
    assert f"'{params.source}'" in message
    assert not paths.raw_dir.exists()


def fake_module(name: str, **functions: Any) -> ModuleType:
    module = ModuleType(name)
    for attribute, function in functions.items():
        setattr(module, attribute, function)
    return module


def write_tree(folder: Path, files: dict[str, bytes]) -> list[str]:
    written = []
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(str(path))
    return written


def test_fetch_gdrive_folder_with_fake_gdown(paths: ProjectPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def download_folder(**kwargs: Any) -> list[str]:
        calls.append(kwargs)
        return write_tree(Path(kwargs["output"]), DATASET)

    monkeypatch.setitem(sys.modules, "gdown", fake_module("gdown", download_folder=download_folder))
    params = DataParams(source="gdrive", layout="folder", gdrive_id="abc123")

    summary = fetch_dataset(params, FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert [call["id"] for call in calls] == ["abc123"]
    assert Path(calls[0]["output"]).is_relative_to(paths.downloads_dir)
    assert files_of(paths.raw_dir) == DATASET
    assert summary.source == "gdrive abc123"


def test_fetch_gdrive_falls_back_to_a_single_archive(paths: ProjectPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    def download_folder(**kwargs: Any) -> list[str]:
        raise RuntimeError("not a folder")

    def download(**kwargs: Any) -> str:
        path = Path(kwargs["output"]) / "ds.zip"
        path.write_bytes(zip_bytes(DATASET))
        return str(path)

    monkeypatch.setitem(sys.modules, "gdown", fake_module("gdown", download_folder=download_folder, download=download))
    params = DataParams(source="gdrive", layout="folder", gdrive_id="file42")

    fetch_dataset(params, FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert files_of(paths.raw_dir) == DATASET


def test_fetch_gdrive_reports_both_failures(paths: ProjectPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    def download_folder(**kwargs: Any) -> list[str]:
        raise RuntimeError("folder is private")

    def download(**kwargs: Any) -> str | None:
        return None

    monkeypatch.setitem(sys.modules, "gdown", fake_module("gdown", download_folder=download_folder, download=download))
    params = DataParams(source="gdrive", layout="folder", gdrive_id="zzz")

    with pytest.raises(DownloadError) as raised:
        fetch_dataset(params, FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    message = str(raised.value)
    assert "zzz" in message
    assert "folder is private" in message
    assert "as a file: nothing was downloaded" in message
    assert not paths.raw_dir.exists()


def test_fetch_kaggle_with_fake_kagglehub(paths: ProjectPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "kaggle-cache" / "owner" / "set"
    write_tree(cache, DATASET)
    before = snapshot(cache)
    handles: list[str] = []

    def dataset_download(handle: str) -> str:
        handles.append(handle)
        return str(cache)

    monkeypatch.setitem(sys.modules, "kagglehub", fake_module("kagglehub", dataset_download=dataset_download))
    params = DataParams(source="kaggle", layout="folder", kaggle_handle="owner/set")

    summary = fetch_dataset(params, FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert handles == ["owner/set"]
    assert files_of(paths.raw_dir) == DATASET
    assert snapshot(cache) == before
    assert summary.source == "kaggle owner/set"


def test_fetch_kaggle_error_is_explained(paths: ProjectPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    def dataset_download(handle: str) -> str:
        raise PermissionError("401 Unauthorized")

    monkeypatch.setitem(sys.modules, "kagglehub", fake_module("kagglehub", dataset_download=dataset_download))
    params = DataParams(source="kaggle", layout="folder", kaggle_handle="owner/set")

    with pytest.raises(DownloadError) as raised:
        fetch_dataset(params, FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    message = str(raised.value)
    assert "owner/set" in message
    assert "401 Unauthorized" in message
    assert "kaggle.json" in message


# --- local folders: symbolic links and special files -------------------------------------------------------------


def listing(folder: Path) -> dict[str, str | bytes | None]:
    """Every entry under `folder` without following links: file bytes, `-> target` for links, None for folders."""
    result: dict[str, str | bytes | None] = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_symlink():
            result[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            result[key] = None
        elif path.is_file():
            result[key] = path.read_bytes()
        else:
            result[key] = "special"
    return result


def test_fetch_local_folder_skips_and_lists_links_that_leave_it_or_lead_nowhere(
    paths: ProjectPaths, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    write_tree(source, DATASET)
    outside = tmp_path / "outside"
    write_tree(outside, {"secret.txt": b"password", "writer/1.tif": b"outside image"})
    genuine = source / "UTSig" / "Genuine" / "1"
    (genuine / "passwd.tif").symlink_to(outside / "secret.txt")
    (genuine / "relative.tif").symlink_to(Path("..", "..", "..", "..", "outside", "secret.txt"))
    (source / "UTSig" / "Genuine" / "2").symlink_to(outside / "writer")
    (genuine / "dangling.tif").symlink_to(source / "gone.tif")
    (genuine / "loop_a.tif").symlink_to(genuine / "loop_b.tif")
    (genuine / "loop_b.tif").symlink_to(genuine / "loop_a.tif")
    (genuine / "self.tif").symlink_to("self.tif")
    (source / "UTSig" / "Again").symlink_to(source / "UTSig" / "Genuine")
    (source / "UTSig" / "up").symlink_to(source)
    (genuine / "copy.tif").symlink_to("1.tif")  # a file inside the folder: copied as a plain file
    os.mkfifo(source / "UTSig" / "pipe")
    (source / "UTSig" / "to_pipe").symlink_to("pipe")
    before = listing(source)
    outside_before = listing(outside)

    summary = fetch_dataset(local_params(source), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert listing(source) == before
    assert listing(outside) == outside_before
    assert files_of(paths.raw_dir) == {**DATASET, "UTSig/Genuine/1/copy.tif": DATASET["UTSig/Genuine/1/1.tif"]}
    assert not any(path.is_symlink() for path in paths.raw_dir.rglob("*"))
    reasons = {item.path: item.reason for item in summary.skipped}
    assert sorted(reasons) == [
        "UTSig/Again",
        "UTSig/Genuine/1/dangling.tif",
        "UTSig/Genuine/1/loop_a.tif",
        "UTSig/Genuine/1/loop_b.tif",
        "UTSig/Genuine/1/passwd.tif",
        "UTSig/Genuine/1/relative.tif",
        "UTSig/Genuine/1/self.tif",
        "UTSig/Genuine/2",
        "UTSig/pipe",
        "UTSig/to_pipe",
        "UTSig/up",
    ]
    assert reasons["UTSig/Genuine/1/passwd.tif"] == f"link to {outside / 'secret.txt'}, outside the source folder"
    assert "outside the source folder" in reasons["UTSig/Genuine/1/relative.tif"]
    assert "outside the source folder" in reasons["UTSig/Genuine/2"]
    assert reasons["UTSig/Genuine/1/dangling.tif"].startswith("broken link")
    for loop in ("loop_a", "loop_b", "self"):
        assert reasons[f"UTSig/Genuine/1/{loop}.tif"].startswith("link loop")
    assert reasons["UTSig/Again"].startswith("link to a folder")
    assert reasons["UTSig/up"].startswith("link to a folder")
    assert reasons["UTSig/pipe"].startswith("special file")
    assert reasons["UTSig/to_pipe"].startswith("link to a special file")
    assert summary.files == len(DATASET) + 1


def test_fetch_local_folder_given_as_a_link_is_followed(paths: ProjectPaths, tmp_path: Path) -> None:
    real = tmp_path / "real"
    write_tree(real, DATASET)
    (tmp_path / "named").symlink_to(real)
    (real / "UTSig" / "inside.tif").symlink_to(real / "UTSig" / "Genuine" / "1" / "1.tif")

    summary = fetch_dataset(local_params(tmp_path / "named"), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert files_of(paths.raw_dir) == {**DATASET, "UTSig/inside.tif": DATASET["UTSig/Genuine/1/1.tif"]}
    assert summary.skipped == ()


# --- archives: limits, and archive or not by name ----------------------------------------------------------------

BOMB_MEMBERS = {f"UTSig/{index}.bin": b"\0" * 400_000 for index in range(3)}  # ~3 KB deflated, 1.2 MB out
SMALL_LIMIT = FAST_DOWNLOAD.model_copy(update={"max_extracted_bytes": 10**6})


def deflated_zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip of deflated `members` (zip_bytes stores them as they are)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_fetch_url_zip_bomb_is_refused_before_writing_and_names_the_parameter(
    paths: ProjectPaths, tmp_path: Path
) -> None:
    archive = deflated_zip_bytes(BOMB_MEMBERS)
    assert len(archive) < 10_000
    paths.raw_dir.mkdir(parents=True)
    (paths.raw_dir / "keep.txt").write_bytes(b"previous dataset")
    before = snapshot(tmp_path, exclude=paths.downloads_dir)

    with LocalHTTPServer({"/bomb.zip": archive}) as server, pytest.raises(DownloadError) as raised:
        fetch_dataset(
            url_params(server.url("/bomb.zip"), sha(archive)), SMALL_LIMIT, SYNTHETIC, paths, show_progress=False
        )

    message = str(raised.value)
    assert str(paths.downloads_dir / "bomb.zip") in message
    assert "download.max_extracted_bytes" in message
    assert "\n" not in message
    assert snapshot(tmp_path, exclude=paths.downloads_dir) == before
    assert (paths.downloads_dir / "bomb.zip").read_bytes() == archive  # kept: never delete an input
    assert sorted(p.name for p in paths.data_dir.iterdir()) == ["downloads", "raw"]


def test_fetch_url_archive_under_the_limits_passes(paths: ProjectPaths) -> None:
    archive = deflated_zip_bytes(BOMB_MEMBERS)
    # All zeros compress about 800 times, over the default ratio limit: raised with the size limit.
    generous = FAST_DOWNLOAD.model_copy(update={"max_extracted_bytes": 2 * 10**6, "max_compression_ratio": 1000.0})
    with LocalHTTPServer({"/ds.zip": archive}) as server:
        fetch_dataset(url_params(server.url("/ds.zip"), sha(archive)), generous, SYNTHETIC, paths, show_progress=False)

    assert files_of(paths.raw_dir) == BOMB_MEMBERS


def test_fetch_local_folder_with_a_zip_bomb_inside_fails_and_leaves_everything(
    paths: ProjectPaths, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    write_tree(source, {**DATASET, "more.zip": deflated_zip_bytes(BOMB_MEMBERS)})
    before = snapshot(source)

    with pytest.raises(DownloadError) as raised:
        fetch_dataset(local_params(source), SMALL_LIMIT, SYNTHETIC, paths, show_progress=False)

    assert str(source / "more.zip") in str(raised.value)
    assert "download.max_extracted_bytes" in str(raised.value)
    assert snapshot(source) == before
    assert not paths.raw_dir.exists()
    assert not paths.raw_dir.with_name("raw.incoming").exists()


def test_fetch_local_folder_copies_an_image_carrying_a_zip_as_an_image(paths: ProjectPaths, tmp_path: Path) -> None:
    source = tmp_path / "source"
    image = b"\x89PNG\r\n\x1a\n" + b"pixels" * 20 + zip_bytes({"hidden/a.txt": b"hidden"})
    write_tree(source, {**DATASET, "UTSig/Genuine/1/3.png": image})
    assert zipfile.is_zipfile(source / "UTSig/Genuine/1/3.png")
    before = snapshot(source)

    fetch_dataset(local_params(source), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert files_of(paths.raw_dir) == {**DATASET, "UTSig/Genuine/1/3.png": image}
    assert snapshot(source) == before


def test_fetch_local_folder_extracts_archives_by_their_name(paths: ProjectPaths, tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_tree(source, {"a.TGZ": tar_gz_bytes({"x.txt": b"x"}), "b.zip": zip_bytes({"y.txt": b"y"})})
    before = snapshot(source)

    fetch_dataset(local_params(source), FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)

    assert files_of(paths.raw_dir) == {"a/x.txt": b"x", "b/y.txt": b"y"}
    assert snapshot(source) == before


# --- secrets in URLs (issue 27: URLs logged without credentials or query tokens) ------------------------------


def test_a_refused_download_names_the_url_without_its_credentials_or_token(tmp_path: Path) -> None:
    url = f"http://reader:hunter2@127.0.0.1:{closed_port()}/data.bin?token=s3cr3t-t0ken"

    with pytest.raises(DownloadError) as raised:
        download_url(url, tmp_path / "data.bin", sha(PAYLOAD), policy(retries=0), show_progress=False)

    message = str(raised.value)
    assert "127.0.0.1" in message and "/data.bin" in message  # still says where
    assert "hunter2" not in message and "s3cr3t-t0ken" not in message and "reader:" not in message


def test_a_failed_url_download_names_the_url_without_its_token(server: LocalHTTPServer, tmp_path: Path) -> None:
    server.fail("/data.bin", times=10, status=500)
    with pytest.raises(DownloadError) as raised:
        download_url(
            server.url("/data.bin") + "?X-Amz-Signature=abcdef123",
            tmp_path / "d.bin",
            sha(PAYLOAD),
            policy(retries=0),
            show_progress=False,
        )
    assert "abcdef123" not in str(raised.value) and "?***" in str(raised.value)


def test_the_download_summary_of_a_url_source_hides_its_token(paths: ProjectPaths) -> None:
    with LocalHTTPServer({"/ds.zip": zip_bytes(DATASET)}) as server:
        url = server.url("/ds.zip") + "?token=s3cr3t"
        data = DataParams(source="url", layout="utsig", url=url, sha256=sha(zip_bytes(DATASET)))
        summary = fetch_dataset(data, FAST_DOWNLOAD, SYNTHETIC, paths, show_progress=False)
    assert "s3cr3t" not in summary.source and summary.source.endswith("/ds.zip?***")

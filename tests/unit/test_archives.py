"""Tests of `tasks.archives`: safe, all-or-nothing extraction of zip and tar archives."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from tasks.archives import (
    STAGING_SUFFIX,
    NotAnArchiveError,
    UnsafeArchiveError,
    check_member_name,
    is_archive,
    safe_extract,
)

TarMember = tuple[tarfile.TarInfo, io.BytesIO | None]
FILES = {
    "UTSig/Genuine/1/1.tif": b"first" * 100,
    "UTSig/Genuine/1/2.tif": b"second" * 100,
    "UTSig/readme.txt": b"hello\n",
}
UNSAFE_NAMES = ["../x", "a/../../x", "/x", "/etc/x", "C:\\x", "C:x", "..\\x", "a\\..\\..\\x", "\\x", "./../x"]
SAFE_NAMES = ["x", "a/b.txt", "a/../b.txt", "./a", "a//b", "a/./b", "a/b/../../c", "dir/", "..x", "a/..b"]


def write_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    """A zip at `path` holding `members` under exactly the given names, and `symlinks` (name -> target)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(zipfile.ZipInfo(name), content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix, so that external_attr carries the mode
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, content: bytes = b"", link: str = "") -> TarMember:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    return info, (io.BytesIO(content) if kind == tarfile.REGTYPE else None)


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w", extra: list[TarMember] | None = None) -> Path:
    """A tar at `path` (mode "w", "w:gz", ...) holding `members` as regular files, then the `extra` members."""
    with tarfile.open(path, mode) as archive:
        for name, content in members.items():
            archive.addfile(*tar_member(name, content=content))
        for info, fileobj in extra or []:
            archive.addfile(info, fileobj)
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_nothing_left(tmp_path: Path, archive: Path, target: Path) -> None:
    """Neither the target nor its staging folder exists, and only the archive sits beside them."""
    assert not target.exists()
    assert not target.with_name(target.name + STAGING_SUFFIX).exists()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [archive.name]


# --- check_member_name -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_check_member_name_refuses_unsafe_names(name: str, tmp_path: Path) -> None:
    archive = tmp_path / "ds.zip"

    with pytest.raises(UnsafeArchiveError) as raised:
        check_member_name(archive, name)

    assert f"'{name}'" in str(raised.value)
    assert str(archive) in str(raised.value)


@pytest.mark.parametrize("name", ["/x", "/etc/x", "C:\\x", "C:x", "\\x"])
def test_check_member_name_calls_absolute_names_absolute(name: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError, match="absolute path"):
        check_member_name(tmp_path / "ds.zip", name)


@pytest.mark.parametrize("name", ["../x", "a/../../x", "..\\x"])
def test_check_member_name_calls_climbing_names_escapes(name: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError, match="escapes the target"):
        check_member_name(tmp_path / "ds.zip", name)


@pytest.mark.parametrize("name", SAFE_NAMES)
def test_check_member_name_accepts_names_inside_the_target(name: str, tmp_path: Path) -> None:
    check_member_name(tmp_path / "ds.zip", name)  # must not raise


# --- successful extraction ---------------------------------------------------------------------------------------


def test_safe_extract_zip(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "ds.zip", {"UTSig/": b"", **FILES})
    target = tmp_path / "out" / "raw"

    safe_extract(archive, target)

    assert files_of(target) == FILES
    assert (target / "UTSig").is_dir()
    assert not target.with_name(target.name + STAGING_SUFFIX).exists()
    assert archive.is_file()


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_safe_extract_tar(mode: str, tmp_path: Path) -> None:
    directory = tar_member("UTSig/Forgery", kind=tarfile.DIRTYPE)
    archive = write_tar(tmp_path / "ds.tar", FILES, mode=mode, extra=[directory])
    target = tmp_path / "raw"

    safe_extract(archive, target)

    assert files_of(target) == FILES
    assert (target / "UTSig" / "Forgery").is_dir()
    assert not target.with_name(target.name + STAGING_SUFFIX).exists()


def test_safe_extract_discards_a_stale_staging_folder(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "ds.zip", FILES)
    target = tmp_path / "raw"
    stale = target.with_name(target.name + STAGING_SUFFIX)
    stale.mkdir()
    (stale / "half.txt").write_bytes(b"from a crashed run")

    safe_extract(archive, target)

    assert files_of(target) == FILES
    assert not stale.exists()


def test_is_archive(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an archive")

    assert is_archive(write_zip(tmp_path / "a.zip", FILES))
    assert is_archive(write_tar(tmp_path / "a.tar.gz", FILES, mode="w:gz"))
    assert not is_archive(text)
    assert not is_archive(tmp_path / "missing.zip")
    assert not is_archive(tmp_path)


# --- refused archives: nothing is extracted ----------------------------------------------------------------------


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_safe_extract_zip_refuses_unsafe_member(name: str, tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "ds.zip", {**FILES, name: b"evil"})
    target = tmp_path / "raw"

    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract(archive, target)

    assert f"'{name}'" in str(raised.value)
    assert "nothing was extracted" in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


@pytest.mark.parametrize("name", UNSAFE_NAMES)
@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_safe_extract_tar_refuses_unsafe_member(name: str, mode: str, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "ds.tar", {**FILES, name: b"evil"}, mode=mode)
    target = tmp_path / "raw"

    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract(archive, target)

    assert f"'{name}'" in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


@pytest.mark.parametrize(
    "member",
    [
        pytest.param(tar_member("UTSig/link", kind=tarfile.SYMTYPE, link="../../outside"), id="symlink-outside"),
        pytest.param(tar_member("UTSig/link", kind=tarfile.SYMTYPE, link="readme.txt"), id="symlink-inside"),
        pytest.param(tar_member("UTSig/hard", kind=tarfile.LNKTYPE, link="UTSig/readme.txt"), id="hardlink"),
        pytest.param(tar_member("UTSig/hard", kind=tarfile.LNKTYPE, link="/etc/passwd"), id="hardlink-outside"),
    ],
)
@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_safe_extract_tar_refuses_links(member: TarMember, mode: str, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "ds.tar", FILES, mode=mode, extra=[member])
    target = tmp_path / "raw"

    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract(archive, target)

    message = str(raised.value)
    assert f"'{member[0].name}'" in message
    assert "is a link" in message
    assert_nothing_left(tmp_path, archive, target)


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_safe_extract_tar_refuses_special_files(kind: bytes, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "ds.tar", FILES, extra=[tar_member("UTSig/device", kind=kind)])
    target = tmp_path / "raw"

    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract(archive, target)

    assert "'UTSig/device'" in str(raised.value)
    assert "special file" in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


def test_safe_extract_zip_refuses_symlink_member(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "ds.zip", FILES, symlinks={"UTSig/link": "../../outside"})
    target = tmp_path / "raw"

    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract(archive, target)

    assert "'UTSig/link'" in str(raised.value)
    assert "is a link" in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


# --- damaged or wrong files --------------------------------------------------------------------------------------


def test_safe_extract_refuses_a_non_archive(tmp_path: Path) -> None:
    not_archive = tmp_path / "ds.zip"
    not_archive.write_bytes(b"<html>Sign in to continue</html>\n" * 40)
    target = tmp_path / "raw"

    with pytest.raises(NotAnArchiveError) as raised:
        safe_extract(not_archive, target)

    assert str(not_archive) in str(raised.value)
    assert "not a zip or tar archive" in str(raised.value)
    assert_nothing_left(tmp_path, not_archive, target)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_safe_extract_refuses_a_truncated_zip(keep: float, tmp_path: Path) -> None:
    whole = write_zip(tmp_path / "whole.zip", FILES).read_bytes()
    archive = tmp_path / "ds.zip"
    archive.write_bytes(whole[: int(len(whole) * keep)])
    (tmp_path / "whole.zip").unlink()
    target = tmp_path / "raw"

    with pytest.raises(NotAnArchiveError) as raised:
        safe_extract(archive, target)

    assert str(archive) in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


def test_safe_extract_refuses_a_truncated_tar_gz(tmp_path: Path) -> None:
    big = {f"UTSig/{index}.bin": bytes([index]) * 5000 + bytes(range(256)) * 20 for index in range(8)}
    whole = write_tar(tmp_path / "whole.tar.gz", big, mode="w:gz").read_bytes()
    archive = tmp_path / "ds.tar.gz"
    archive.write_bytes(whole[: len(whole) // 2])
    (tmp_path / "whole.tar.gz").unlink()
    target = tmp_path / "raw"

    with pytest.raises(NotAnArchiveError) as raised:
        safe_extract(archive, target)

    assert str(archive) in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


def test_safe_extract_zip_with_corrupt_member_data_leaves_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as opened:
        opened.writestr("UTSig/a.txt", b"A" * 1000)
        opened.writestr("UTSig/b.txt", b"B" * 1000)
    data = bytearray(archive.read_bytes())
    data[data.rindex(b"B" * 1000) + 500] = ord("X")  # the second member's bytes no longer match its CRC
    archive.write_bytes(bytes(data))
    target = tmp_path / "raw"

    with pytest.raises(NotAnArchiveError) as raised:
        safe_extract(archive, target)

    assert str(archive) in str(raised.value)
    assert "damaged" in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)

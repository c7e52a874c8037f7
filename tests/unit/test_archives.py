"""Tests of `tasks.data.archives`: safe, all-or-nothing extraction of zip and tar archives."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from tasks.data.archives import (
    MAX_BYTES_PARAMETER,
    MAX_MEMBERS_PARAMETER,
    MAX_RATIO_PARAMETER,
    RATIO_GRACE_BYTES,
    STAGING_SUFFIX,
    ArchiveLimits,
    NotAnArchiveError,
    UnsafeArchiveError,
    check_member_name,
    copy_within_budget,
    declared_format,
    is_archive,
    safe_extract,
)
from tasks.workspace.errors import ArchiveLimitError, DownloadError

TarMember = tuple[tarfile.TarInfo, io.BytesIO | None]
LIMITS = ArchiveLimits(max_bytes=10**6, max_members=1000, max_ratio=200)
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

    safe_extract(archive, target, LIMITS)

    assert files_of(target) == FILES
    assert (target / "UTSig").is_dir()
    assert not target.with_name(target.name + STAGING_SUFFIX).exists()
    assert archive.is_file()


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_safe_extract_tar(mode: str, tmp_path: Path) -> None:
    directory = tar_member("UTSig/Forgery", kind=tarfile.DIRTYPE)
    archive = write_tar(tmp_path / "ds.tar", FILES, mode=mode, extra=[directory])
    target = tmp_path / "raw"

    safe_extract(archive, target, LIMITS)

    assert files_of(target) == FILES
    assert (target / "UTSig" / "Forgery").is_dir()
    assert not target.with_name(target.name + STAGING_SUFFIX).exists()


def test_safe_extract_discards_a_stale_staging_folder(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "ds.zip", FILES)
    target = tmp_path / "raw"
    stale = target.with_name(target.name + STAGING_SUFFIX)
    stale.mkdir()
    (stale / "half.txt").write_bytes(b"from a crashed run")

    safe_extract(archive, target, LIMITS)

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
        safe_extract(archive, target, LIMITS)

    assert f"'{name}'" in str(raised.value)
    assert "nothing was extracted" in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


@pytest.mark.parametrize("name", UNSAFE_NAMES)
@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_safe_extract_tar_refuses_unsafe_member(name: str, mode: str, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "ds.tar", {**FILES, name: b"evil"}, mode=mode)
    target = tmp_path / "raw"

    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract(archive, target, LIMITS)

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
        safe_extract(archive, target, LIMITS)

    message = str(raised.value)
    assert f"'{member[0].name}'" in message
    assert "is a link" in message
    assert_nothing_left(tmp_path, archive, target)


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_safe_extract_tar_refuses_special_files(kind: bytes, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "ds.tar", FILES, extra=[tar_member("UTSig/device", kind=kind)])
    target = tmp_path / "raw"

    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract(archive, target, LIMITS)

    assert "'UTSig/device'" in str(raised.value)
    assert "special file" in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


def test_safe_extract_zip_refuses_symlink_member(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "ds.zip", FILES, symlinks={"UTSig/link": "../../outside"})
    target = tmp_path / "raw"

    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract(archive, target, LIMITS)

    assert "'UTSig/link'" in str(raised.value)
    assert "is a link" in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


# --- damaged or wrong files --------------------------------------------------------------------------------------


def test_safe_extract_refuses_a_non_archive(tmp_path: Path) -> None:
    not_archive = tmp_path / "ds.zip"
    not_archive.write_bytes(b"<html>Sign in to continue</html>\n" * 40)
    target = tmp_path / "raw"

    with pytest.raises(NotAnArchiveError) as raised:
        safe_extract(not_archive, target, LIMITS)

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
        safe_extract(archive, target, LIMITS)

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
        safe_extract(archive, target, LIMITS)

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
        safe_extract(archive, target, LIMITS)

    assert str(archive) in str(raised.value)
    assert "damaged" in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


# --- archive or not: by name, never by content -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.zip", "zip"), ("A.ZIP", "zip"), ("a.tar", "tar"), ("a.tar.gz", "tar"), ("a.tgz", "tar"), ("a.tar.xz", "tar")],
)
def test_declared_format_reads_the_name(name: str, kind: str) -> None:
    assert declared_format(Path(name)) == kind


def test_an_image_carrying_an_appended_zip_is_not_an_archive(tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"pixels" * 10 + write_zip(tmp_path / "x.zip", FILES).read_bytes())

    assert zipfile.is_zipfile(image)  # the content alone would say "zip"
    assert declared_format(image) is None
    assert not is_archive(image)


def test_safe_extract_keeps_the_archive(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "ds.zip", FILES)
    before = archive.read_bytes()

    safe_extract(archive, tmp_path / "raw", LIMITS)

    assert archive.read_bytes() == before


def test_safe_extract_of_a_declared_archive_without_a_telling_name_reads_the_content(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "dataset-archive", FILES, mode="w:gz")

    safe_extract(archive, tmp_path / "raw", LIMITS)

    assert files_of(tmp_path / "raw") == FILES


# --- size limits: zip bombs are refused before anything is written ------------------------------------------------

ZEROS = b"\0" * 400_000  # under the ratio's grace size, deflates to ~400 bytes
BOMB_MEMBER = b"\0" * (RATIO_GRACE_BYTES + 1)  # over the grace size, deflates ~1000 times
SMALL = ArchiveLimits(max_bytes=10**6, max_members=4, max_ratio=200)


def deflated_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip at `path` whose members are deflated (write_zip stores them as they are)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def assert_limit_refusal(tmp_path: Path, archive: Path, parameter: str) -> str:
    """Extracting `archive` under SMALL fails naming the archive and `parameter`, and leaves nothing."""
    target = tmp_path / "raw"
    with pytest.raises(ArchiveLimitError) as raised:
        safe_extract(archive, target, SMALL)
    message = str(raised.value)
    assert str(archive) in message
    assert f"raise {parameter} in params.yaml" in message
    assert "nothing was extracted" in message
    assert isinstance(raised.value, UnsafeArchiveError)  # a user error, reported in one line
    assert_nothing_left(tmp_path, archive, target)
    return message


@pytest.mark.parametrize("mode", ["zip", "w:gz", "w"])
def test_too_many_uncompressed_bytes_are_refused(mode: str, tmp_path: Path) -> None:
    members = {f"UTSig/{index}.bin": ZEROS for index in range(3)}  # 1.2 MB against a 1 MB limit
    archive = (
        deflated_zip(tmp_path / "bomb.zip", members)
        if mode == "zip"
        else write_tar(tmp_path / ("bomb.tar.gz" if mode == "w:gz" else "bomb.tar"), members, mode=mode)
    )
    if mode != "w":
        assert archive.stat().st_size < 10_000  # a few kilobytes that would expand to 1.2 MB

    message = assert_limit_refusal(tmp_path, archive, MAX_BYTES_PARAMETER)
    assert "members declare" in message  # refused from the headers, before writing


@pytest.mark.parametrize("name", ["many.zip", "many.tar.gz"])
def test_too_many_members_are_refused(name: str, tmp_path: Path) -> None:
    members = {f"UTSig/{index}.txt": b"x" for index in range(SMALL.max_members + 1)}
    archive = (
        write_zip(tmp_path / name, members) if name.endswith(".zip") else write_tar(tmp_path / name, members, "w:gz")
    )

    assert_limit_refusal(tmp_path, archive, MAX_MEMBERS_PARAMETER)


def test_limits_let_an_archive_at_the_limits_through(tmp_path: Path) -> None:
    size = SMALL.max_bytes // SMALL.max_members
    members = {f"UTSig/{index}.bin": ZEROS[:size] for index in range(SMALL.max_members)}
    archive = deflated_zip(tmp_path / "full.zip", members)

    safe_extract(archive, tmp_path / "raw", SMALL)

    assert files_of(tmp_path / "raw") == members


def test_a_zip_member_with_a_bomb_ratio_is_refused_naming_it(tmp_path: Path) -> None:
    archive = deflated_zip(tmp_path / "bomb.zip", {"UTSig/ok.txt": b"ok", "UTSig/zeros.bin": BOMB_MEMBER})
    generous = ArchiveLimits(max_bytes=10**9, max_members=10, max_ratio=200)
    target = tmp_path / "raw"

    with pytest.raises(ArchiveLimitError) as raised:
        safe_extract(archive, target, generous)

    assert "'UTSig/zeros.bin'" in str(raised.value)
    assert MAX_RATIO_PARAMETER in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


def test_a_tar_gz_with_a_bomb_ratio_is_refused(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "bomb.tar.gz", {"UTSig/zeros.bin": BOMB_MEMBER}, mode="w:gz")
    generous = ArchiveLimits(max_bytes=10**9, max_members=10, max_ratio=200)
    target = tmp_path / "raw"

    with pytest.raises(ArchiveLimitError, match=MAX_RATIO_PARAMETER.replace(".", r"\.")):
        safe_extract(archive, target, generous)

    assert_nothing_left(tmp_path, archive, target)


def test_a_small_very_compressible_member_is_not_a_bomb(tmp_path: Path) -> None:
    archive = deflated_zip(tmp_path / "blank.zip", {"UTSig/blank.bin": ZEROS})

    safe_extract(archive, tmp_path / "raw", SMALL)

    assert files_of(tmp_path / "raw") == {"UTSig/blank.bin": ZEROS}


def test_a_zip_whose_headers_understate_a_size_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "lying.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as opened:
        opened.writestr("UTSig/a.bin", b"A" * 1000)
    data = bytearray(archive.read_bytes())
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")  # declared uncompressed size: 10
    archive.write_bytes(bytes(data))
    assert zipfile.ZipFile(archive).infolist()[0].file_size == 10
    target = tmp_path / "raw"

    with pytest.raises(NotAnArchiveError, match="damaged"):
        safe_extract(archive, target, SMALL)

    assert_nothing_left(tmp_path, archive, target)


def test_copy_within_budget_stops_at_the_budget(tmp_path: Path) -> None:
    destination = tmp_path / "member.bin"

    with pytest.raises(ArchiveLimitError) as raised:
        copy_within_budget(tmp_path / "ds.zip", "UTSig/a.bin", io.BytesIO(b"x" * 5000), destination, budget=1000)

    message = str(raised.value)
    assert "ds.zip" in message and "'UTSig/a.bin'" in message and MAX_BYTES_PARAMETER in message
    assert destination.stat().st_size <= 1000


def test_copy_within_budget_copies_what_fits(tmp_path: Path) -> None:
    destination = tmp_path / "member.bin"

    written = copy_within_budget(tmp_path / "ds.zip", "a", io.BytesIO(b"x" * 1000), destination, budget=1000)

    assert written == 1000
    assert destination.read_bytes() == b"x" * 1000


def test_a_bomb_split_into_members_under_the_grace_size_is_refused_by_the_archive_ratio(tmp_path: Path) -> None:
    members = {f"UTSig/{index}.bin": ZEROS for index in range(20)}  # 8 MB of zeros in a few kilobytes
    archive = deflated_zip(tmp_path / "split-bomb.zip", members)
    generous = ArchiveLimits(max_bytes=10**9, max_members=100, max_ratio=200)
    target = tmp_path / "raw"

    with pytest.raises(ArchiveLimitError) as raised:
        safe_extract(archive, target, generous)

    assert "the archive expands" in str(raised.value) and MAX_RATIO_PARAMETER in str(raised.value)
    assert_nothing_left(tmp_path, archive, target)


def test_a_failed_write_names_the_target_folder_not_a_damaged_archive(tmp_path: Path) -> None:
    """The file system refuses the member (here: a name too long to create), as a full disk would."""
    archive = write_zip(tmp_path / "long.zip", {"UTSig/" + "n" * 300 + ".png": b"image"})
    target = tmp_path / "raw"

    with pytest.raises(DownloadError) as raised:
        safe_extract(archive, target, LIMITS)

    message = str(raised.value)
    assert "cannot write the extracted files to" in message and str(tmp_path) in message
    assert "damaged" not in message
    assert_nothing_left(tmp_path, archive, target)

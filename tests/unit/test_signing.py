"""The signature of a model version: what is signed, what a client refuses, where the keys live."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tasks.registration.signing import (
    SIGNING_KEY_VARIABLE,
    TAG_SIGNATURE,
    TAG_SIGNED_FILES,
    VERIFY_KEY_VARIABLE,
    KeyFiles,
    check_files,
    ensure_signing_key,
    folder_digests,
    key_files,
    read_verify_key,
    signature_tags,
    signed_files,
)
from tasks.workspace.errors import ModelFileError, UntrustedModelError

NAME, VERSION = "signed-model", "3"


@pytest.fixture
def keys(tmp_path: Path) -> KeyFiles:
    return KeyFiles(tmp_path / "keys" / "model-signing.key", tmp_path / "keys" / "model-signing.pub")


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "artifacts").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "artifacts" / "calibration.json").write_text('{"threshold": 0.5}')
    return folder


def test_the_private_key_is_created_private_and_kept(keys: KeyFiles) -> None:
    first = ensure_signing_key(keys)
    assert stat.S_IMODE(keys.private.stat().st_mode) == 0o600
    assert keys.public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    again = ensure_signing_key(keys)  # reused, never regenerated
    assert first.public_key().public_bytes_raw() == again.public_key().public_bytes_raw()


def test_a_signed_folder_verifies_and_each_change_is_named(keys: KeyFiles, model_folder: Path) -> None:
    tags = signature_tags(ensure_signing_key(keys), NAME, VERSION, folder_digests(model_folder))
    expected = signed_files(NAME, VERSION, tags, read_verify_key(keys))
    check_files(NAME, VERSION, model_folder, expected)  # unchanged: passes

    (model_folder / "artifacts" / "calibration.json").write_text('{"threshold": -1e9}')
    with pytest.raises(UntrustedModelError, match=r"version 3: file artifacts/calibration\.json differs"):
        check_files(NAME, VERSION, model_folder, expected)
    (model_folder / "artifacts" / "calibration.json").unlink()
    with pytest.raises(UntrustedModelError, match=r"signed file artifacts/calibration\.json is missing"):
        check_files(NAME, VERSION, model_folder, expected)
    (model_folder / "code.py").write_text("import os")
    with pytest.raises(UntrustedModelError, match=r"file code\.py was not signed"):
        check_files(NAME, VERSION, model_folder, {"MLmodel": expected["MLmodel"]})


def test_the_signature_binds_name_version_and_file_list(keys: KeyFiles, model_folder: Path) -> None:
    import json

    tags = signature_tags(ensure_signing_key(keys), NAME, VERSION, folder_digests(model_folder))
    public = read_verify_key(keys)
    for name, version in ((NAME, "4"), ("other-model", VERSION)):
        with pytest.raises(UntrustedModelError, match="its signature does not match"):
            signed_files(name, version, tags, public)
    files = json.loads(tags[TAG_SIGNED_FILES])
    files["MLmodel"] = "0" * 64  # a forged list (the digest of an attacker's file)
    with pytest.raises(UntrustedModelError, match="its signature does not match"):
        signed_files(NAME, VERSION, {**tags, TAG_SIGNED_FILES: json.dumps(files)}, public)
    with pytest.raises(UntrustedModelError, match="is not signed by the register stage"):
        signed_files(NAME, VERSION, {key: value for key, value in tags.items() if key != TAG_SIGNATURE}, public)
    with pytest.raises(UntrustedModelError, match="its signature does not match"):
        signed_files(NAME, VERSION, {**tags, TAG_SIGNATURE: "not base64!"}, public)


def test_another_key_is_refused(keys: KeyFiles, model_folder: Path, tmp_path: Path) -> None:
    other = KeyFiles(tmp_path / "other.key", tmp_path / "other.pub")
    tags = signature_tags(ensure_signing_key(other), NAME, VERSION, folder_digests(model_folder))
    ensure_signing_key(keys)
    with pytest.raises(UntrustedModelError, match="signed by [0-9a-f]{16}; this client trusts [0-9a-f]{16}"):
        signed_files(NAME, VERSION, tags, read_verify_key(keys))


def test_a_client_without_a_key_is_told_where_to_get_one(keys: KeyFiles) -> None:
    with pytest.raises(UntrustedModelError, match=VERIFY_KEY_VARIABLE):
        read_verify_key(keys)


def test_the_public_half_of_the_private_key_verifies_when_no_public_file_exists(keys: KeyFiles) -> None:
    private = ensure_signing_key(keys)
    keys.public.unlink()
    assert read_verify_key(keys).public_bytes_raw() == private.public_key().public_bytes_raw()


def test_environment_variables_name_the_key_files(tmp_path: Path) -> None:
    default = KeyFiles(tmp_path / "a.key", tmp_path / "a.pub")
    chosen = key_files(default.private, default.public, {SIGNING_KEY_VARIABLE: "/team/k", VERIFY_KEY_VARIABLE: "/p"})
    assert chosen == KeyFiles(Path("/team/k"), Path("/p"), public_named=True)
    assert key_files(default.private, default.public, {}) == default


def test_links_inside_a_version_are_refused(model_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("secret")
    (model_folder / "artifacts" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(UntrustedModelError, match="a link inside a model version"):
        folder_digests(model_folder)


def test_the_cli_defaults_of_the_server_limits_are_the_servers() -> None:
    from tasks.cli import model_commands as cli_model_commands
    from tasks.scoring import model_server

    assert cli_model_commands.DEFAULT_MAX_ACTIVE == model_server.DEFAULT_MAX_ACTIVE
    assert cli_model_commands.DEFAULT_BODY_SECONDS == model_server.DEFAULT_BODY_SECONDS


def test_a_named_public_key_that_is_missing_is_an_error_not_a_fallback(keys: KeyFiles) -> None:
    """SIGPIPE_VERIFY_KEY pointing nowhere must not silently trust a private key lying beside it."""
    ensure_signing_key(keys)
    keys.public.unlink()
    with pytest.raises(UntrustedModelError, match="does not exist"):
        read_verify_key(KeyFiles(keys.private, keys.public, public_named=True))


def test_a_public_key_file_others_can_write_is_refused(keys: KeyFiles) -> None:
    ensure_signing_key(keys)
    keys.public.chmod(0o666)
    with pytest.raises(UntrustedModelError, match="writable by other users"):
        read_verify_key(keys)


def test_a_public_key_file_that_is_not_the_private_keys_half_is_refused(keys: KeyFiles, tmp_path: Path) -> None:
    """Someone who replaced the public file (the key clients trust) is caught at the next register."""
    ensure_signing_key(keys)
    other = KeyFiles(tmp_path / "other.key", tmp_path / "other.pub")
    ensure_signing_key(other)
    keys.public.write_bytes(other.public.read_bytes())
    with pytest.raises(ModelFileError, match="not the public half of the signing key"):
        ensure_signing_key(keys)


def test_names_from_the_registry_are_printed_on_one_line(keys: KeyFiles, model_folder: Path) -> None:
    tags = signature_tags(ensure_signing_key(keys), NAME, VERSION, folder_digests(model_folder))
    (model_folder / "evil\nline\x1b[2J").write_text("x")
    with pytest.raises(UntrustedModelError) as raised:
        check_files(NAME, VERSION, model_folder, signed_files(NAME, VERSION, tags, read_verify_key(keys)))
    assert "\n" not in str(raised.value) and "\x1b" not in str(raised.value)
    nested = {**tags, TAG_SIGNED_FILES: "[" * 100_000 + "]" * 100_000, "sigpipe.signing_key": "x\ny"}
    with pytest.raises(UntrustedModelError) as refused:
        signed_files(NAME, VERSION, nested, read_verify_key(keys))
    assert "\n" not in str(refused.value)


def test_only_the_register_stage_is_told_where_the_signing_key_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's stages that read downloads and images (untrusted input) never see the key's path:
    the pipeline takes it out of its environment and sets it only while register runs."""
    import os

    from flows.pipeline import signing_key_for

    monkeypatch.delenv(SIGNING_KEY_VARIABLE, raising=False)
    for stage in ("download", "prepare", "embed", "train", "evaluate", "calibrate"):
        with signing_key_for(stage, "/team/model-signing.key"):
            assert SIGNING_KEY_VARIABLE not in os.environ
    with signing_key_for("register", "/team/model-signing.key"):
        assert os.environ[SIGNING_KEY_VARIABLE] == "/team/model-signing.key"
    assert SIGNING_KEY_VARIABLE not in os.environ  # the pipeline puts it back once every stage has run


def test_the_pipeline_gives_its_process_the_signing_key_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a run (failed here, in its first stage: no DVC repository), the process's environment names
    the key again, so a later registration in the same process signs with it."""
    import os

    from flows.pipeline import pipeline_flow
    from tasks.workspace.errors import StageFailedError
    from tests.conftest import make_workspace

    workspace = make_workspace(tmp_path / "workspace")
    monkeypatch.setenv(SIGNING_KEY_VARIABLE, "/team/model-signing.key")
    with pytest.raises(StageFailedError):
        pipeline_flow.fn(str(workspace / "params.yaml"))
    assert os.environ[SIGNING_KEY_VARIABLE] == "/team/model-signing.key"

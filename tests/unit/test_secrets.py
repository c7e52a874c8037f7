"""Secrets stay secret (issue 27, small ones): secret files are private from their creation, and URLs
are logged without credentials or query tokens."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tasks.tracking.runs import flatten_params
from tasks.workspace.files import redacted_url, without_secrets, write_private_file


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        (
            "https://user:pw@data.example.org:8443/a/b.zip?sig=abc&x=1#part",
            "https://***@data.example.org:8443/a/b.zip?***",
        ),
        ("http://token@[::1]/ds.tar.gz", "http://***@[::1]/ds.tar.gz"),
        ("https://example.org/UTSig.zip", "https://example.org/UTSig.zip"),
        ("local/path?with=question", "local/path?with=question"),  # not a URL: unchanged
        ("none", "none"),
        ("https://u:p@host:notaport/x.zip", "https://***@host:notaport/x.zip"),  # malformed port: no crash
    ],
)
def test_urls_are_logged_without_credentials_or_query(url: str, logged: str) -> None:
    assert redacted_url(url) == logged


def test_an_error_message_loses_the_urls_secrets() -> None:
    url = "https://reader:hunter2@example.org/x.zip?token=t0k"
    text = "Max retries exceeded with url: /x.zip?token=t0k (reader:hunter2)"
    assert without_secrets(text, url) == "Max retries exceeded with url: /x.zip?*** (reader:***)"


def test_mlflow_params_carry_no_url_secret() -> None:
    flat = flatten_params({"data": {"source": "url", "url": "https://u:p@host/d.zip?token=t"}})
    assert flat == {"data.source": "url", "data.url": "https://***@host/d.zip?***"}


def test_a_secret_file_is_private_from_its_creation(tmp_path: Path) -> None:
    path = tmp_path / "password"
    previous = os.umask(0)  # the most permissive umask: a write-then-chmod would leave a 0666 window
    try:
        write_private_file(path, "s3cret\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "s3cret\n"
    with pytest.raises(FileExistsError):  # never overwritten
        write_private_file(path, "other\n")
    assert path.read_text() == "s3cret\n"

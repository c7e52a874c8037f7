"""The tests' `dvc` commands send no usage analytics, though their workspaces come from `dvc init`
(whose config would send them): no daemon per command, no report file left in the temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DVC_NO_ANALYTICS_VARIABLE

DVC_TIMEOUT_SECONDS = 120


def test_a_dvc_init_workspace_sends_no_analytics_under_the_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=DVC_TIMEOUT_SECONDS)
    from dvc.analytics import is_enabled

    monkeypatch.chdir(tmp_path)
    assert os.environ.get(DVC_NO_ANALYTICS_VARIABLE)
    assert not is_enabled()
    monkeypatch.delenv(DVC_NO_ANALYTICS_VARIABLE)
    assert is_enabled()  # what `dvc init` alone would do: the setting above is what turns them off

"""The pipeline's last step: `dvc push` to the default remote when there is one (a team's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.runtime.orchestration import default_dvc_remote, push_outputs
from tasks.workspace.errors import StageFailedError


@pytest.fixture
def repository(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A DVC repository (no git) with one tracked file."""
    environment = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    root = tmp_path / "repository"
    root.mkdir()
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, env=environment, check=True)
    (root / "model.bin").write_bytes(b"weights")
    subprocess.run(["dvc", "add", "-q", "model.bin"], cwd=root, env=environment, check=True)
    return root, environment


def test_without_a_default_remote_nothing_is_pushed(repository: tuple[Path, dict[str, str]]) -> None:
    root, environment = repository
    assert default_dvc_remote(root, environment) is None
    assert push_outputs(root, environment) is None


def test_outputs_go_to_the_default_remote(repository: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, environment = repository
    remote = tmp_path / "shared"
    subprocess.run(["dvc", "remote", "add", "-d", "team", str(remote)], cwd=root, env=environment, check=True)
    pushed = push_outputs(root, environment)
    assert pushed is not None and pushed.startswith("remote 'team': ") and "1 file pushed" in pushed
    stored = [path for path in remote.rglob("*") if path.is_file()]
    assert [path.read_bytes() for path in stored] == [b"weights"]
    assert "up to date" in push_outputs(root, environment).lower()  # a second push sends nothing


def test_a_failed_push_names_the_remote_and_says_why(repository: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, environment = repository
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the remote folder should be")
    subprocess.run(["dvc", "remote", "add", "-d", "team", str(blocked)], cwd=root, env=environment, check=True)
    with pytest.raises(StageFailedError, match="dvc push to remote 'team' failed"):
        push_outputs(root, environment)

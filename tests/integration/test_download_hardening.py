"""The download stage, run as `python -m flows.download` (what `dvc repro` does), on hostile local inputs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import edit_params

STAGE_TIMEOUT_SECONDS = 300
IMAGES = {"alice/genuine/1.png": b"first", "alice/genuine/2.png": b"second"}


def run_download(workspace: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the download stage's entry point in `workspace`."""
    return subprocess.run(
        [sys.executable, "-m", "flows.download"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=STAGE_TIMEOUT_SECONDS,
    )


def test_download_stage_skips_and_lists_bad_links(workspace: Path, subprocess_env: dict[str, str]) -> None:
    source = workspace.parent / "dataset"
    for name, content in IMAGES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(content)
    (source / "alice" / "genuine" / "passwd.png").symlink_to("/etc/passwd")
    (source / "alice" / "genuine" / "gone.png").symlink_to(source / "missing.png")
    (source / "alice" / "genuine" / "loop.png").symlink_to("loop.png")
    edit_params(workspace / "params.yaml", {"data": {"source": "local", "layout": "folder", "path": str(source)}})

    result = run_download(workspace, subprocess_env)

    assert result.returncode == 0, result.stdout + result.stderr
    raw = workspace / "data" / "raw"
    assert {p.relative_to(raw).as_posix(): p.read_bytes() for p in raw.rglob("*") if p.is_file()} == IMAGES
    output = result.stdout + result.stderr  # Prefect logs the printed lines (log_prints) to stderr
    assert "skipped alice/genuine/passwd.png: link to /etc/passwd, outside the source folder" in output
    assert "skipped alice/genuine/gone.png: broken link" in output
    assert "skipped alice/genuine/loop.png: link loop" in output
    assert "from local " in output and "; 3 skipped" in output
    metrics = json.loads((workspace / "metrics" / "download.json").read_text())
    assert metrics["skipped_files"] == 3
    assert [item["path"] for item in metrics["skipped"]] == [
        "alice/genuine/gone.png",
        "alice/genuine/loop.png",
        "alice/genuine/passwd.png",
    ]


def test_download_stage_refuses_a_zip_bomb_in_one_line(workspace: Path, subprocess_env: dict[str, str]) -> None:
    archive = workspace.parent / "bomb.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as opened:
        for index in range(3):
            opened.writestr(f"alice/genuine/{index}.png", b"\0" * 400_000)
    archive.write_bytes(buffer.getvalue())
    edit_params(
        workspace / "params.yaml",
        {
            "data": {"source": "local", "layout": "folder", "path": str(archive)},
            "download": {"max_extracted_bytes": 1_000_000},
        },
    )

    result = run_download(workspace, subprocess_env)

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert str(archive) in errors[0] and "download.max_extracted_bytes (1000000)" in errors[0]
    assert "Traceback" not in result.stderr.split(errors[0])[1]
    assert archive.read_bytes() == buffer.getvalue()
    assert not (workspace / "data" / "raw").exists()

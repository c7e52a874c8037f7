"""dvc.lock records the code, commands and parameters the tree holds now.

A commit that changes a stage's code or dvc.yaml without the dvc.lock a run writes leaves every fresh
clone's `make demo` with a modified dvc.lock, and `dvc status` of a pulled workspace reporting stages
as changed that are not. `dvc status` compares each stage's recorded dependencies with the tree; its
data dependencies and outputs are absent from a fresh clone (and differ in a developer's workspace),
so only the dependencies git tracks (code, params.yaml, constraints) and changed commands count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DVC_TIMEOUT_SECONDS = 120
CHANGED_DEPENDENCIES = "changed deps"


def tracked_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return set(listed.stdout.splitlines())


def stale_records(status: dict[str, list[object]], tracked: set[str]) -> dict[str, list[str]]:
    """Per stage, what dvc.lock records differently from the tree: tracked dependencies (a file, or a
    folder holding tracked files) and parameters, and changes of the stage itself ("changed command")."""
    stale: dict[str, list[str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, str):
                stale.setdefault(stage, []).append(entry)
                continue
            for path, change in dict(entry).get(CHANGED_DEPENDENCIES, {}).items():
                is_tracked = path in tracked or any(name.startswith(f"{path}/") for name in tracked)
                if is_tracked or isinstance(change, dict):  # a dict: parameters of a params file
                    stale.setdefault(stage, []).append(f"{path}: {change}")
    return stale


def test_dvc_lock_matches_the_code_and_parameters_in_the_tree() -> None:
    status = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "status", "--json"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=DVC_TIMEOUT_SECONDS,
        check=True,
    )
    stale = stale_records(json.loads(status.stdout or "{}"), tracked_files())
    assert not stale, (
        f"dvc.lock is stale for {stale}: run the stages (`make demo` in a fresh clone, or `dvc repro`) and "
        "commit the dvc.lock it writes"
    )


def test_stale_records_are_found_and_data_changes_are_not() -> None:
    """The filter on a `dvc status --json` of a stale tree (as DVC prints it)."""
    status = {
        "train": [
            {CHANGED_DEPENDENCIES: {"data/prepared": "deleted", "tasks/training/train.py": "modified"}},
            {"changed outs": {"models/classifier.keras": "not in cache"}},
        ],
        "evaluate": [{CHANGED_DEPENDENCIES: {"params.yaml": {"evaluate.partitions": "modified"}}}],
        "calibrate": ["changed command"],
        "prepare": [{CHANGED_DEPENDENCIES: {"data/raw": "modified", "tasks/data/datasets": "modified"}}],
    }
    tracked = {"tasks/training/train.py", "params.yaml", "tasks/data/datasets/utsig.py"}
    assert stale_records(status, tracked) == {
        "train": ["tasks/training/train.py: modified"],
        "evaluate": ["params.yaml: {'evaluate.partitions': 'modified'}"],
        "calibrate": ["changed command"],
        "prepare": ["tasks/data/datasets: modified"],
    }

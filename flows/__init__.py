"""Prefect flows of signature-pipeline: one module per stage, each runnable as `python -m flows.<stage>`.

Importing this package keeps Prefect's state in the workspace's `.prefect/` folder instead of the
shared `~/.prefect` (tasks/workspace/prefect_home.py). It has to happen here, before any module imports
Prefect: importing Prefect reads `PREFECT_HOME` and creates that folder.
"""

from __future__ import annotations

from pathlib import Path

from tasks.workspace.prefect_home import keep_prefect_state_in_workspace

WORKSPACE_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["WORKSPACE_ROOT", "keep_prefect_state_in_workspace"]

keep_prefect_state_in_workspace(WORKSPACE_ROOT)

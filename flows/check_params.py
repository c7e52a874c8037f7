"""Stage `check_params`: validate every parameter of params.yaml before any other stage runs.

DVC removes a stage's outputs before it runs the stage's command, so a stage that fails on its
own parameters has already lost its last good outputs (metrics, plots, the model). This stage is
upstream of all the others (`download` depends on its output), so `dvc repro` runs it first and
stops on a bad value before removing anything else; the pipeline flow runs it first too.
It is plain Python, not a Prefect flow (no API server to start): it takes a fraction of a second.
Run it with `python -m flows.check_params` (what `dvc repro check_params` does).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.workspace.config import check_params_file
from tasks.workspace.errors import ConfigError
from tasks.workspace.files import write_json
from tasks.workspace.paths import PARAMS_FILE_NAME, ProjectPaths

# The marker's content is fixed: DVC hashes it, and a changed hash would rerun every later stage.
CHECK_MARKER: dict[str, object] = {"params_valid": True}


def check_params(params_file: Path) -> dict[str, object]:
    """Validate every parameter group of `params_file`; write the marker only when all are valid."""
    groups = check_params_file(params_file)
    write_json(ProjectPaths.from_root(params_file.resolve().parent).params_check_file, CHECK_MARKER)
    print(f"parameters valid: {len(groups)} groups in {params_file}")
    return CHECK_MARKER


def main() -> None:
    """Entry point of `python -m flows.check_params` on `params.yaml` of the working directory
    (how `dvc repro` runs it); an invalid parameter prints one error and exits with code 1."""
    try:
        check_params(Path.cwd() / PARAMS_FILE_NAME)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

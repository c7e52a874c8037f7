"""A command's process, its work done, exits without the collector's last passes (`tasks.runtime.exit`):
the block's objects are frozen when it ends, however it ends, and the entry points users and DVC run
(`sigpipe`, a stage's `python -m flows.<stage>`) go through it. Library callers (this test process) do not."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks.runtime.exit import no_collection_at_exit

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROCESS_TIMEOUT_SECONDS = 120
# Run in the child: report, from an exit handler (after the entry point's block), how many objects are frozen.
FREEZE_REPORTER = textwrap.dedent(
    """
    import atexit, gc, sys
    atexit.register(lambda: print(f"frozen at exit: {gc.get_freeze_count()}"))
    """
)


@pytest.fixture
def collector_restored():
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("collector_restored")
@pytest.mark.parametrize("ending", [None, SystemExit(1), KeyboardInterrupt()])
def test_the_block_ends_with_every_object_frozen(ending: BaseException | None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    def work() -> None:
        with no_collection_at_exit():
            if ending is not None:
                raise ending

    if ending is None:
        work()
    else:
        with pytest.raises(type(ending)):
            work()
    assert gc.get_freeze_count() > 0


def run_child(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter in `cwd` (the project importable, Prefect's home in `cwd`: no
    profile of the user's can point it at a server), the freeze reporter first."""
    return subprocess.run(
        [sys.executable, "-c", FREEZE_REPORTER + textwrap.dedent(code)],
        cwd=cwd,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "", "DO_NOT_TRACK": "true", "PREFECT_HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
    )


def frozen_at_exit(output: str) -> int:
    """The count the child's exit handler printed."""
    return int(output.rsplit("frozen at exit: ", 1)[1].split()[0])


def test_the_sigpipe_command_exits_frozen(tmp_path: Path) -> None:
    result = run_child(
        """
        sys.argv = ["sigpipe", "--help"]
        from tasks.cli.app import run
        run()
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "predict" in result.stdout  # the app ran
    assert frozen_at_exit(result.stdout) > 0


def test_a_stage_entry_point_exits_frozen_also_on_a_user_error(tmp_path: Path) -> None:
    # No params.yaml in the working directory: the stage prints its one-line error and exits with 1.
    result = run_child(
        """
        from flows._stage import run_entry_point
        from flows.calibrate import calibrate_flow
        run_entry_point(calibrate_flow)
        """,
        tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ") and "params.yaml" in result.stderr
    assert frozen_at_exit(result.stdout) > 0


def test_the_pipeline_entry_point_exits_frozen_also_on_a_user_error(tmp_path: Path) -> None:
    # The run itself replaced by one that fails as a bad parameter does: main reports it and exits with 1.
    result = run_child(
        """
        import flows.pipeline
        from tasks.workspace.errors import ConfigError
        def refused(params_file):
            raise ConfigError("a refused parameter")
        flows.pipeline.run_with_an_api = refused
        flows.pipeline.main()
        """,
        tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "error: a refused parameter" in result.stderr
    assert frozen_at_exit(result.stdout) > 0


def test_the_console_script_is_the_freezing_entry_point() -> None:
    import tomllib

    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sigpipe"] == "tasks.cli.app:run"

"""One training at a time per checkpoint folder.

Two trainings writing the same checkpoint folder (a rerun beside an orphaned one) would mix their
epochs in one state file and one MLflow run. A training holds an OS file lock (`filelock`, released
by the kernel when its holder dies, even by `kill -9`) beside the folder for its whole life. A
second one waits briefly, long enough for a holder that is shutting down, then fails with one line
naming the holder; it never trains beside it. The lock file sits beside the folder, not inside:
training deletes the folder, and a lock on a deleted file would let a third process lock a new one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.runtime.lifeline import PARENT_DEATH_GRACE_SECONDS
from tasks.runtime.processes import CHILD_STOP_GRACE_SECONDS
from tasks.workspace.errors import TrainingBusyError
from tasks.workspace.locks import exclusive_lock

LOCK_SUFFIX = ".lock"
# A holder whose parent died stops within tasks.runtime.lifeline's grace, plus its Prefect server's stop;
# twice that leaves room for a slow shutdown before the waiter gives up.
CHECKPOINT_LOCK_WAIT_SECONDS = 2 * (PARENT_DEATH_GRACE_SECONDS + CHILD_STOP_GRACE_SECONDS)


def lock_file_of(checkpoint_dir: Path) -> Path:
    """The lock file of a checkpoint folder: `<folder>.lock` beside it."""
    return checkpoint_dir.with_name(checkpoint_dir.name + LOCK_SUFFIX)


@contextmanager
def checkpoint_folder_lock(
    checkpoint_dir: Path, timeout_seconds: float = CHECKPOINT_LOCK_WAIT_SECONDS
) -> Iterator[None]:
    """Hold the checkpoint folder of a training for the life of the `with` block.

    Waits up to `timeout_seconds` for another holder (saying so once), then raises
    TrainingBusyError naming it.
    """
    lock_file = lock_file_of(checkpoint_dir)
    with exclusive_lock(
        lock_file,
        timeout_seconds,
        label="training",
        announce=lambda holder: print(
            f"waiting up to {timeout_seconds:.0f} s for another training to release {checkpoint_dir} ({holder})"
        ),
        busy_error=lambda holder: TrainingBusyError(
            f"another training ({holder}) is using the checkpoint folder {checkpoint_dir} "
            f"(lock {lock_file}; waited {timeout_seconds:.0f} s). Two trainings must not share it: wait for that "
            "one to finish or stop it, then run again."
        ),
    ):
        yield

"""One training at a time per checkpoint folder.

Two trainings writing the same checkpoint folder (a rerun beside an orphaned one) would mix their
epochs in one state file and one MLflow run. A training holds an OS file lock (`filelock`, released
by the kernel when its holder dies, even by `kill -9`) beside the folder for its whole life. A
second one waits briefly, long enough for a holder that is shutting down, then fails with one line
naming the holder; it never trains beside it. The lock file sits beside the folder, not inside:
training deletes the folder, and a lock on a deleted file would let a third process lock a new one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tasks.errors import TrainingBusyError

LOCK_SUFFIX = ".lock"
# A holder whose parent died stops within tasks.lifeline's grace (10 s) plus a server stop (5 s).
CHECKPOINT_LOCK_WAIT_SECONDS = 30.0
LOCK_POLL_SECONDS = 0.5


def lock_file_of(checkpoint_dir: Path) -> Path:
    """The lock file of a checkpoint folder: `<folder>.lock` beside it."""
    return checkpoint_dir.with_name(checkpoint_dir.name + LOCK_SUFFIX)


def holder_description() -> str:
    """Who holds the lock: pid, host and since when (UTC), written into the lock file."""
    since = datetime.now(UTC).isoformat(timespec="seconds")
    return f"pid {os.getpid()} on {socket.gethostname()} since {since}"


@contextmanager
def checkpoint_folder_lock(
    checkpoint_dir: Path, timeout_seconds: float = CHECKPOINT_LOCK_WAIT_SECONDS
) -> Iterator[None]:
    """Hold the checkpoint folder of a training for the life of the `with` block.

    Waits up to `timeout_seconds` for another holder, then raises TrainingBusyError naming it.
    """
    from filelock import FileLock, Timeout

    lock_file = lock_file_of(checkpoint_dir)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, timeout=timeout_seconds, poll_interval=LOCK_POLL_SECONDS)
    try:
        lock.acquire()
    except Timeout as error:
        holder = lock_file.read_text(encoding="utf-8").strip() if lock_file.is_file() else ""
        raise TrainingBusyError(
            f"another training ({holder or 'holder unknown'}) is using the checkpoint folder {checkpoint_dir} "
            f"(lock {lock_file}; waited {timeout_seconds:.0f} s). Two trainings must not share it: wait for that "
            "one to finish or stop it, then run again."
        ) from error
    try:
        lock_file.write_text(holder_description(), encoding="utf-8")
        yield
    finally:
        lock.release()

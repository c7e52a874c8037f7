"""Exclusive OS file locks that say who holds them.

The workspace lock (one pipeline run at a time) and the checkpoint lock (one training per
checkpoint folder) are `filelock` locks: the kernel releases them when their holder dies, even by
`kill -9`. Each holder records its pid, host, start time and command in a side file
(`<lock>.holder`), so a run that has to wait says whom it waits for, and the error on timeout
names the holder too. A record left by a killed holder is simply overwritten by the next one.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

HOLDER_SUFFIX = ".holder"
HOLDER_COMMAND_CHARACTERS = 300  # the holder's command line, cut to this length
UNKNOWN_HOLDER = "holder unknown: it has not recorded itself yet, or its record is unreadable"
LOCK_POLL_SECONDS = 0.5


def holder_file(lock_file: Path) -> Path:
    """The side file where the holder of `lock_file` says who it is."""
    return lock_file.with_name(lock_file.name + HOLDER_SUFFIX)


def record_holder(lock_file: Path, label: str | None) -> None:
    """Write this process's pid, host, start time and command (and `label`, e.g. the flow run) beside the lock."""
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        # One line: a `python -c` program's newlines would split the message that names the holder.
        "command": " ".join(shlex.join(sys.orig_argv).split())[:HOLDER_COMMAND_CHARACTERS],
        "label": label,
    }
    holder_file(lock_file).write_text(json.dumps(record) + "\n", encoding="utf-8")


def describe_holder(lock_file: Path) -> str:
    """Who holds `lock_file`, from its side file, in words: pid, host, since when, and what it runs."""
    try:
        record = json.loads(holder_file(lock_file).read_text(encoding="utf-8"))
        label = f"{record['label']}, " if record.get("label") else ""
        return f"{label}pid {record['pid']} on {record['host']} since {record['started']}: {record['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return UNKNOWN_HOLDER


@contextmanager
def exclusive_lock(
    lock_file: Path,
    timeout_seconds: float,
    busy_error: Callable[[str], Exception],
    label: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold `lock_file` for the `with` block, waiting up to `timeout_seconds` for another holder.

    When the lock is taken, `announce` gets the holder's description once, before waiting; on
    timeout, `busy_error(description)` is raised.
    """
    from filelock import FileLock, Timeout

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, poll_interval=LOCK_POLL_SECONDS)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        if announce is not None:
            announce(describe_holder(lock_file))
        try:
            lock.acquire(timeout=timeout_seconds)
        except Timeout as error:
            raise busy_error(describe_holder(lock_file)) from error
    try:
        record_holder(lock_file, label)
        yield
    finally:
        holder_file(lock_file).unlink(missing_ok=True)
        lock.release()

"""A stage that DVC launched stops when DVC dies (`die_with_parent`). Killing only `dvc repro` would
otherwise leave the stage training on, and a rerun would train beside it. (Children that must die
with the process that started them are guarded by `tasks.services.supervisor.guard_children`.)

Why a watchdog thread and not `prctl(PR_SET_PDEATHSIG)`: the kernel's parent-death signal fires
when the *thread* that forked the child exits (a parent that launches stages from a worker
thread kills them early), only for the direct parent, and is Linux-only. DVC runs a stage's
command through `$SHELL -c` (or `/bin/sh -c`): bash replaces itself with the command, dash
(Debian's `/bin/sh`) does not, so the stage's parent is often a shell that keeps waiting after
DVC is killed. The watchdog therefore watches the parent and, while it is a shell, the shell's
parent too; on Linux it waits on pidfds (exact, no polling, no pid reuse), elsewhere it polls.
It can also stop the stage gracefully (SIGTERM becomes SystemExit: `with` blocks close, `atexit`
stops child servers) before it escalates to SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from tasks.runtime.processes import FIRST_STAT_FIELD, PARENT_FIELD, PROC_DIR, stat_fields, wait_for_exits

LAUNCHED_BY_DVC_VARIABLE = "DVC_STAGE"  # set by DVC for every stage command it runs
SHELL_NAMES = frozenset({"sh", "dash", "bash", "zsh", "fish", "ksh", "mksh", "busybox"})
PARENT_DEATH_GRACE_SECONDS = 10.0  # time to end runs and stop servers before SIGKILL
EXIT_ON_SIGTERM = 128 + signal.SIGTERM  # the shell's code for "ended by SIGTERM"


def process_name(pid: int) -> str:
    """The command name of `pid` (Linux `/proc`), or "" when it cannot be read."""
    try:
        return (PROC_DIR / str(pid) / "comm").read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def parent_of(pid: int) -> int:
    """The parent pid of `pid` (Linux `/proc`), or 0 when it cannot be read."""
    fields = stat_fields(pid)
    return 0 if fields is None else int(fields[PARENT_FIELD - FIRST_STAT_FIELD])


def watched_ancestors() -> list[int]:
    """The parent, and while it is a shell (`sh -c` that did not exec), its parent too: the
    process whose death means nobody waits for this one any more."""
    chain = [os.getppid()]
    while process_name(chain[-1]) in SHELL_NAMES and (grandparent := parent_of(chain[-1])) > 1:
        chain.append(grandparent)
    return chain


def say(message: str) -> None:
    """One line on stderr; the reader may be gone with the parent, so a broken pipe is ignored."""
    with contextlib.suppress(OSError):
        print(message, file=sys.stderr, flush=True)


def exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM as SystemExit in the main thread, so `with` blocks close (MLflow ends the run
    FAILED) and `atexit` handlers run (Prefect stops its temporary server) before the exit."""
    raise SystemExit(EXIT_ON_SIGTERM)


def stop_when_gone(watched: Sequence[int], parent: int, grace_seconds: float) -> None:
    """Wait for a watched ancestor to exit, then stop this process: SIGTERM first (a clean exit
    through `exit_on_sigterm`), SIGKILL after `grace_seconds` if it is still running (e.g. inside
    a long native call, or where SIGTERM is ignored)."""
    # The parent may have died before the watch began (then getppid names another process).
    gone = wait_for_exits(watched, wait_all=False) if os.getppid() == parent else {parent}
    say(f"error: the process that started this stage (pid {min(gone)}) has exited; stopping this stage")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_seconds)
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(grace_seconds: float = PARENT_DEATH_GRACE_SECONDS) -> bool:
    """When DVC launched this process, stop it once DVC (or the shell between) has died.

    Only under DVC (`DVC_STAGE` set): a stage started by hand with `nohup` must survive its shell.
    Call it from the main thread (it installs a SIGTERM handler). Returns whether the watchdog was
    started.
    """
    if LAUNCHED_BY_DVC_VARIABLE not in os.environ:
        return False
    parent = os.getppid()
    watched = watched_ancestors()
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # SIG_DFL would end the process without cleanup
        signal.signal(signal.SIGTERM, exit_on_sigterm)
    watchdog = threading.Thread(
        target=stop_when_gone, args=(watched, parent, grace_seconds), name="parent-watchdog", daemon=True
    )
    watchdog.start()
    return True

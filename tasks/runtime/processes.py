"""Small process helpers, standard library only: whether a process (or group) runs, waits on exits
(pidfds on Linux: exact, no polling, no pid reuse; elsewhere polling), a process's start time (what
tells a reused pid from the process a pid file named), stopping processes, and the watcher that ends
children once their owner has exited.

The pipeline's stages import this module (tasks/runtime/lifeline.py, tasks/tracking/runs.py,
tasks/training/checkpoint_lock.py) and tasks/services/supervisor.py builds on it, so editing the
services does not make DVC rerun the stages. This file is also the watcher's script
(`python -P tasks/runtime/processes.py OWNER CHILD...`, started by
`tasks.services.supervisor.guard_children`): it imports only the standard library.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CHILD_STOP_GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL after this
POLL_SECONDS = 0.5  # only where pidfds are unavailable (not Linux)
PROC_DIR = Path("/proc")
FIRST_STAT_FIELD = 3  # of /proc/<pid>/stat (1-based) that `stat_fields` starts with: the state
PARENT_FIELD = 4
START_TIME_FIELD = 22  # the start time in clock ticks since boot
WATCHER_FILE = Path(__file__).resolve()


def reaches(send: Callable[[int, int], None], target: int) -> bool:
    """Whether signal 0 sent with `send` (os.kill, os.killpg) finds `target` (another user's counts)."""
    try:
        send(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_alive(pid: int) -> bool:
    """Whether a process `pid` exists (a process of another user counts)."""
    return reaches(os.kill, pid)


def group_alive(leader: int) -> bool:
    """Whether any process of the group `leader` started (`start_new_session`) is still running."""
    return reaches(os.killpg, leader)


def reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is an exited child of this process (a zombie stays in its
    process group and answers signal 0); nothing for any other process."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def open_pidfds(pids: Sequence[int]) -> dict[int, int] | None:
    """pid -> pidfd for the processes still alive, or None where pidfds are unsupported."""
    if not hasattr(os, "pidfd_open"):
        return None
    handles = {}
    for pid in pids:
        try:
            handles[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except OSError:  # an old kernel (before 5.3)
            for handle in handles.values():
                os.close(handle)
            return None
    return handles


def wait_for_exits(pids: Sequence[int], wait_all: bool, timeout: float | None = None) -> set[int]:
    """Block until any (or, with `wait_all`, every) process of `pids` has exited, or `timeout`
    seconds have passed; returns the pids that exited."""
    deadline = None if timeout is None else time.monotonic() + timeout
    handles = open_pidfds(pids)
    if handles is not None:
        gone = {pid for pid in pids if pid not in handles}
        try:
            while handles and not (gone and not wait_all):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select(list(handles.values()), [], [], left)
                if not ready:
                    break
                for pid in [pid for pid, handle in handles.items() if handle in ready]:
                    gone.add(pid)
                    os.close(handles.pop(pid))
        finally:
            for handle in handles.values():
                os.close(handle)
        return gone
    while True:
        gone = {pid for pid in pids if not is_alive(pid)}
        if (gone == set(pids) if wait_all else gone) or (deadline is not None and time.monotonic() >= deadline):
            return gone
        time.sleep(POLL_SECONDS)


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat from the third (the state) on, or None when it cannot be read
    (no such process, not Linux). The name (field 2) may hold spaces and ')': split after the last ')'."""
    try:
        stat = (PROC_DIR / str(pid) / "stat").read_text(encoding="utf-8")
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, /proc/<pid>/stat field 22): with the pid, it names one
    process, never a later one that reuses the pid. None where /proc cannot tell."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[START_TIME_FIELD - FIRST_STAT_FIELD])


def stop_processes(pids: Sequence[int], grace_seconds: float = CHILD_STOP_GRACE_SECONDS) -> None:
    """SIGTERM `pids`, SIGKILL those still running after `grace_seconds` (through pidfds where
    available, so a pid reused by an unrelated process is never signalled)."""
    handles = open_pidfds(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                if handles is None:
                    os.kill(pid, sig)
                elif pid in handles:
                    signal.pidfd_send_signal(handles[pid], sig)
            except ProcessLookupError:
                continue
        if sig == signal.SIGTERM and wait_for_exits(pids, wait_all=True, timeout=grace_seconds) == set(pids):
            break
    for handle in (handles or {}).values():
        os.close(handle)


def watch(owner: int, children: Sequence[int]) -> None:
    """The watcher's work: when `owner` exits first, stop the `children` it leaves behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    owner_alive = os.getppid() == owner
    while owner_alive and children:
        gone = wait_for_exits([owner, *children], wait_all=False)
        children = [pid for pid in children if pid not in gone]
        owner_alive = owner not in gone
    if children:
        stop_processes(children)


if __name__ == "__main__":
    watch(int(sys.argv[1]), [int(pid) for pid in sys.argv[2:]])

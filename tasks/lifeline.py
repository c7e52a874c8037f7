"""Processes that do not outlive the process they serve (the watcher: standard library only).

- `die_with_parent`: a stage that DVC launched stops when DVC dies. Killing only `dvc repro`
  would otherwise leave the stage training on, and a rerun would train beside it.
- `guard_children`: a small watcher process ends given child processes (the pipeline's temporary
  Prefect server, `tasks.prefect_api`) once their owner has exited, even by `kill -9`, which no
  code in the owner survives.

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
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

LAUNCHED_BY_DVC_VARIABLE = "DVC_STAGE"  # set by DVC for every stage command it runs
SHELL_NAMES = frozenset({"sh", "dash", "bash", "zsh", "fish", "ksh", "mksh", "busybox"})
PARENT_DEATH_GRACE_SECONDS = 10.0  # time to end runs and stop servers before SIGKILL
EXIT_ON_SIGTERM = 128 + signal.SIGTERM  # the shell's code for "ended by SIGTERM"
CHILD_STOP_GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL after this
POLL_SECONDS = 0.5  # only where pidfds are unavailable (not Linux)
GROUP_POLL_SECONDS = 0.1  # while a process group stops
PROC_DIR = Path("/proc")
WATCHER_FILE = Path(__file__).resolve()


def process_name(pid: int) -> str:
    """The command name of `pid` (Linux `/proc`), or "" when it cannot be read."""
    try:
        return (PROC_DIR / str(pid) / "comm").read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def parent_of(pid: int) -> int:
    """The parent pid of `pid` (Linux `/proc`), or 0 when it cannot be read."""
    try:
        stat = (PROC_DIR / str(pid) / "stat").read_text(encoding="utf-8")
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and ')': split after the last


def watched_ancestors() -> list[int]:
    """The parent, and while it is a shell (`sh -c` that did not exec), its parent too: the
    process whose death means nobody waits for this one any more."""
    chain = [os.getppid()]
    while process_name(chain[-1]) in SHELL_NAMES and (grandparent := parent_of(chain[-1])) > 1:
        chain.append(grandparent)
    return chain


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


def guard_children(pids: Sequence[int]) -> subprocess.Popen[bytes]:
    """Start a watcher that ends `pids` (SIGTERM, then SIGKILL) once this process has exited.

    The watcher runs in its own session with no terminal and no inherited pipes, so Ctrl-C or a
    reader waiting for the stage's output end does not wait for it; it exits as soon as either
    this process or all of `pids` have exited.
    """
    return subprocess.Popen(
        # -P: the script's folder (tasks/) is not put on sys.path, so no module there shadows the stdlib.
        [sys.executable, "-P", str(WATCHER_FILE), str(os.getpid()), *(str(pid) for pid in pids)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


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


def group_alive(leader: int) -> bool:
    """Whether any process of the group `leader` started (`start_new_session`) is still running."""
    return reaches(os.killpg, leader)


def stop_process_group(leader: int, grace_seconds: float = CHILD_STOP_GRACE_SECONDS) -> bool:
    """SIGTERM the whole process group of `leader` (a server and the workers it forked), SIGKILL what
    is left after `grace_seconds`; returns once the group is gone, False when it was gone already.
    The leader must not be an unreaped child of this process (a zombie stays in its group)."""
    try:
        os.killpg(leader, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_seconds
    while group_alive(leader) and time.monotonic() < deadline:
        time.sleep(GROUP_POLL_SECONDS)
    if group_alive(leader):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader, signal.SIGKILL)
        while group_alive(leader):
            time.sleep(GROUP_POLL_SECONDS)
    return True


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

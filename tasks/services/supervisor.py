"""The one supervisor of the project's background processes: start, health-check, stop, guard.

- `Service(name, run_dir)`: a named background server (`make up`'s and `make team-up`'s Prefect and
  MLflow servers, worker, model server) started in its own session with its log (`<name>.log`) and
  pid file (`<name>.pid`) in `run_dir`; `running_pid` tells whether it runs (a stale pid file, or one
  naming a process that is not the leader of its own session, i.e. a reused pid, is removed), `stop`
  sends TERM to its whole process group and KILL after a grace period.
- `wait_until_healthy`: polls a health URL (tenacity) until it answers 200; a process that exits
  first or stays silent past the timeout raises ServiceError naming the log to read.
- `guard_children`: a small watcher process ends given child processes (the pipeline's temporary
  Prefect server, `tasks.runtime.prefect_api`) once their owner has exited, even by `kill -9`, which no code in
  the owner survives. A stage that must die with DVC uses `tasks.runtime.lifeline.die_with_parent`.

This file is also the watcher's script (`python -P tasks/services/supervisor.py OWNER CHILD...`): it imports
only the standard library at module level (tenacity and the project's errors are imported where used).
On Linux, waits use pidfds (exact, no polling, no pid reuse); elsewhere they poll.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CHILD_STOP_GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL after this
SERVICE_STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.5  # only where pidfds are unavailable (not Linux)
GROUP_POLL_SECONDS = 0.1  # while a process group stops
HEALTH_POLL_SECONDS = 0.5
HEALTH_REQUEST_SECONDS = 2.0
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


def start_process(
    command: Sequence[str],
    environment: Mapping[str, str] | None = None,
    log: Path | None = None,
    new_session: bool = True,
    append_log: bool = True,
) -> subprocess.Popen[bytes]:
    """Start `command` in the background, stdin closed, its output in `log` (discarded without one);
    with `new_session`, in its own session, so Ctrl-C in the caller's terminal does not reach it and
    `stop_process_group` ends every process it forks. Secrets go in `environment`, never in `command`."""
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(log.open("ab" if append_log else "wb")) if log is not None else subprocess.DEVNULL
        return subprocess.Popen(
            list(command),
            env=dict(environment) if environment is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
            start_new_session=new_session,
        )


def answers(url: str) -> bool:
    """Whether `url` answers 200 (a health check: no credentials needed)."""
    import urllib.error  # here, not at the top: the watcher script never needs it
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=HEALTH_REQUEST_SECONDS) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until_healthy(
    url: str,
    name: str,
    timeout_seconds: float,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    hint: str = "",
) -> None:
    """Poll `url` (tenacity) until it answers 200. A `process` that exits first, or silence past
    `timeout_seconds`, raises ServiceError naming `name`, the `log` to read and the `hint`."""
    from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

    from tasks.workspace.errors import ServiceError

    advice = "; ".join(part for part in (f"see {log}" if log is not None else "", hint) if part)
    advice = f": {advice}" if advice else ""

    def healthy() -> bool:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"{name} exited with code {process.returncode} before answering {url}{advice}")
        return answers(url)

    polls = Retrying(
        retry=retry_if_result(lambda ok: not ok),
        stop=stop_after_delay(timeout_seconds),
        wait=wait_fixed(HEALTH_POLL_SECONDS),
    )
    try:
        polls(healthy)
    except RetryError:
        raise ServiceError(f"{name} did not answer {url} within {timeout_seconds:.0f} s{advice}") from None


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


def stop_process_group(leader: int, grace_seconds: float = CHILD_STOP_GRACE_SECONDS) -> bool:
    """SIGTERM the whole process group of `leader` (a server and the workers it forked), SIGKILL what
    is left after `grace_seconds`; returns once the group is gone, False when it was gone already."""
    try:
        os.killpg(leader, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_seconds
    while True:
        reap(leader)  # a leader that is this process's child would otherwise stay, a zombie, in its group
        if not group_alive(leader):
            return True
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader, signal.SIGKILL)
        time.sleep(GROUP_POLL_SECONDS)


@dataclass(frozen=True)
class Service:
    """A named background server: its log and pid file in `run_dir`."""

    name: str
    run_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def running_pid(self) -> int | None:
        """The pid of this service when it runs. A pid file naming no process, or a process that does
        not lead its own session (the pid was reused since), is stale: it is removed."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        reap(pid)
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid and is_alive(pid):
                return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(
        self, command: Sequence[str], environment: Mapping[str, str], append_log: bool = True
    ) -> subprocess.Popen[bytes] | None:
        """Start the service in its own session unless it runs; its process, None when it ran already."""
        if self.running_pid() is not None:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        process = start_process(command, environment, self.log_file, append_log=append_log)
        self.pid_file.write_text(f"{process.pid}\n")
        return process

    def wait_until_healthy(
        self, url: str, title: str, timeout_seconds: float, process: subprocess.Popen[bytes] | None = None
    ) -> None:
        """`wait_until_healthy` for this service: an error names its log."""
        wait_until_healthy(url, title, timeout_seconds, process, self.log_file)

    def stop(self, grace_seconds: float = SERVICE_STOP_GRACE_SECONDS) -> bool:
        """TERM the service's process group, KILL it after `grace_seconds`; the pid file is removed.
        Whether it was running."""
        pid = self.running_pid()
        self.pid_file.unlink(missing_ok=True)
        return pid is not None and stop_process_group(pid, grace_seconds)


def guard_children(pids: Sequence[int]) -> subprocess.Popen[bytes]:
    """Start a watcher that ends `pids` (SIGTERM, then SIGKILL) once this process has exited.

    The watcher runs in its own session with no terminal and no inherited pipes, so Ctrl-C or a
    reader waiting for the stage's output end does not wait for it; it exits as soon as either
    this process or all of `pids` have exited.
    """
    # -P: the script's folder (tasks/) is not put on sys.path, so no module there shadows the stdlib.
    command = [sys.executable, "-P", str(WATCHER_FILE), str(os.getpid()), *(str(pid) for pid in pids)]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


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

"""The one supervisor of the project's background processes: start, health-check, stop, guard.

- `Service(name, run_dir)`: a named background server (`make up`'s and `make team-up`'s Prefect and
  MLflow servers, worker, model server) started in its own session with its log (`<name>.log`) and
  pid file (`<name>.pid`: the pid and the process's start time) in `run_dir`; `running_pid` tells
  whether it runs (a stale pid file, or one whose pid now names another process, i.e. a reused pid,
  is removed), `stop` sends TERM to its whole process group and KILL after a grace period, and
  raises ServiceError when the group cannot be signalled or outlives the KILL.
- `wait_until_healthy`: polls a health URL (tenacity) until it answers 200; a process that exits
  first or stays silent past the timeout raises ServiceError naming the log to read.
- `guard_children`: a small watcher process (the script tasks/runtime/processes.py) ends given child
  processes (the pipeline's temporary Prefect server, `tasks.runtime.prefect_api`) once their owner has
  exited, even by `kill -9`, which no code in the owner survives. A stage that must die with DVC uses
  `tasks.runtime.lifeline.die_with_parent`.

The standard-library process helpers (liveness, pidfd waits, start times, stopping pids, the watcher)
are in tasks/runtime/processes.py, which the pipeline's stages import without this module (tasks/services/).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tasks.runtime.processes import CHILD_STOP_GRACE_SECONDS, WATCHER_FILE, group_alive, is_alive, reap, start_time
from tasks.workspace.errors import ServiceError

SERVICE_STOP_GRACE_SECONDS = 10.0  # make down, make team-down: TERM, then KILL after this
SERVICE_STARTUP_SECONDS = 120.0  # how long a service may take to answer its health check (2 busy cores)
KILL_WAIT_SECONDS = 5.0  # after SIGKILL, how long a process group may take to disappear
GROUP_POLL_SECONDS = 0.1  # while a process group stops
HEALTH_POLL_SECONDS = 0.5
HEALTH_REQUEST_SECONDS = 2.0


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

    advice = "; ".join(part for part in (f"see {log}" if log is not None else "", hint) if part)
    advice = f": {advice}" if advice else ""

    def healthy() -> bool:
        """Whether `url` answers 200 now; a `process` that has exited raises ServiceError."""
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


def signal_group(leader: int, sig: signal.Signals) -> bool:
    """Send `sig` to the process group of `leader`; False when the group is gone. A group this user
    may not signal raises ServiceError."""
    try:
        os.killpg(leader, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        raise ServiceError(f"not allowed to signal process group {leader} (another user's processes?)") from None
    return True


def stop_process_group(leader: int, grace_seconds: float = CHILD_STOP_GRACE_SECONDS) -> bool:
    """SIGTERM the whole process group of `leader` (a server and the workers it forked), SIGKILL what
    is left after `grace_seconds`; returns once the group is gone, False when it was gone already.
    A group still there KILL_WAIT_SECONDS after the SIGKILL (a process of another user in it, one stuck
    in the kernel) raises ServiceError."""
    if not signal_group(leader, signal.SIGTERM):
        return False
    kill_at = time.monotonic() + grace_seconds
    killed = False
    while True:
        reap(leader)  # a leader that is this process's child would otherwise stay, a zombie, in its group
        if not group_alive(leader):
            return True
        now = time.monotonic()
        if now >= kill_at + KILL_WAIT_SECONDS and killed:
            raise ServiceError(
                f"process group {leader} is still running {grace_seconds + KILL_WAIT_SECONDS:.0f} s after "
                "SIGTERM and SIGKILL: look for its processes with `ps -g` and end them as their owner"
            )
        if now >= kill_at and not killed:
            killed = True
            if not signal_group(leader, signal.SIGKILL):
                return True
        time.sleep(GROUP_POLL_SECONDS)


def stop_services(*tiers: Sequence[Service], grace_seconds: float = SERVICE_STOP_GRACE_SECONDS) -> list[str]:
    """Stop `tiers` of services, one tier after the other (the clients of a server before it), the
    services of one tier at once: each is sent TERM and waited for in its own thread, so `make down`
    takes the slowest service's shutdown per tier, not the sum of them all. Every service is stopped
    even when one before it could not be; the names of those that were running, in the order given.
    A service that could not be stopped raises ServiceError once all were tried."""
    stopped, errors = [], []
    for tier in tiers:
        with ThreadPoolExecutor(max_workers=max(1, len(tier))) as pool:
            outcomes = [(service, pool.submit(service.stop, grace_seconds)) for service in tier]
        for service, outcome in outcomes:
            try:
                if outcome.result():
                    stopped.append(service.name)
            except ServiceError as error:
                errors.append(f"{service.name}: {error}")
    if errors:
        raise ServiceError("; ".join(errors))
    return stopped


def same_process(pid: int, recorded_start_time: int | None) -> bool:
    """Whether the running `pid` is the process a pid file recorded: started at `recorded_start_time`
    or, without one (or where /proc cannot tell), the leader of its own session as a service is."""
    started = start_time(pid)
    if recorded_start_time is not None and started is not None:
        return started == recorded_start_time
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False


@dataclass(frozen=True)
class Service:
    """A named background server: its log and pid file in `run_dir`."""

    name: str
    run_dir: Path

    @property
    def pid_file(self) -> Path:
        """The service's pid file: its pid and start time (`pid start_time`)."""
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        """The service's log: its stdout and stderr."""
        return self.run_dir / f"{self.name}.log"

    def running_pid(self) -> int | None:
        """The pid of this service when it runs. A pid file naming no process, or a process that started
        at another time than the one recorded (the pid was reused since), is stale: it is removed. A pid
        file without a start time (written before they were recorded) names the service while its pid
        leads its own session, as the service's does."""
        try:
            fields = self.pid_file.read_text().split()
            pid = int(fields[0])
            recorded = int(fields[1]) if len(fields) > 1 else None
        except (OSError, ValueError, IndexError):
            return None
        reap(pid)
        if is_alive(pid) and same_process(pid, recorded):
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
        started = start_time(process.pid)
        self.pid_file.write_text(f"{process.pid}{'' if started is None else f' {started}'}\n")
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
    # -P: the script's folder (tasks/runtime/) is not put on sys.path, so no module there shadows the stdlib.
    command = [sys.executable, "-P", str(WATCHER_FILE), str(os.getpid()), *(str(pid) for pid in pids)]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )

"""The one supervisor (tasks/services/supervisor.py) against real processes: a tiny HTTP server started as a
service answers its health check; a service that exits first or never answers is an error naming its
log; stop escalates to KILL for a process group that ignores TERM, and gives up with an error on one
that outlives the KILL; stale and reused pid files (a reused pid, even one leading its process group)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.runtime.processes import start_time
from tasks.services import supervisor
from tasks.services.supervisor import Service, stop_process_group, wait_until_healthy
from tasks.workspace.errors import ServiceError
from tests.support.model_server import free_port
from tests.support.processes import running, wait_until_gone

START_SECONDS = 30.0
GONE_SECONDS = 5.0
GRACE_SECONDS = 0.5

# Ignores SIGTERM, forks a child into its process group, then says so in its log and waits.
STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    child = subprocess.Popen([sys.executable, "-c", deaf])
    print("ready", child.pid, flush=True)
    time.sleep(120)
    """
)


def wait_for_line(log: Path, prefix: str) -> str:
    deadline = time.monotonic() + START_SECONDS
    while True:
        lines = [line for line in log.read_text().splitlines() if line.startswith(prefix)] if log.exists() else []
        if lines:
            return lines[0]
        assert time.monotonic() < deadline, f"{log} never said {prefix!r}"
        time.sleep(0.05)


@pytest.fixture
def killer() -> Iterator[list[int]]:
    """Pids to SIGKILL at the end of the test whatever happened, so no test leaves processes behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_real_http_server_is_started_answers_and_is_stopped(tmp_path: Path, killer: list[int]) -> None:
    port = free_port()
    server = Service("web", tmp_path / "run")
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    process = server.start(command, dict(os.environ))
    assert process is not None
    killer.append(process.pid)
    server.wait_until_healthy(f"http://127.0.0.1:{port}/", "the web server", START_SECONDS, process)
    assert server.pid_file.read_text().split()[0] == str(process.pid) and server.running_pid() == process.pid
    assert os.getpgid(process.pid) == process.pid  # its own session: its process group is stopped as one
    assert server.start(command, dict(os.environ)) is None  # running already: nothing else is started
    assert server.stop(GRACE_SECONDS) is True
    assert wait_until_gone(process.pid, GONE_SECONDS) and not server.pid_file.exists()
    assert server.stop(GRACE_SECONDS) is False and server.running_pid() is None
    assert "GET / " in server.log_file.read_text()  # its output went to its log


def test_a_service_that_exits_first_is_an_error_naming_its_log(tmp_path: Path) -> None:
    crashing = Service("crashing", tmp_path)
    process = crashing.start([sys.executable, "-c", "print('port in use'); raise SystemExit(3)"], dict(os.environ))
    assert process is not None
    url = f"http://127.0.0.1:{free_port()}/health"
    expected = rf"the crashing server exited with code 3 before answering {url}: see {crashing.log_file}"
    with pytest.raises(ServiceError, match=expected):
        crashing.wait_until_healthy(url, "the crashing server", START_SECONDS, process)
    assert "port in use" in crashing.log_file.read_text()
    assert crashing.running_pid() is None and not crashing.pid_file.exists()  # the stale pid file is gone


def test_a_service_that_never_answers_is_an_error_naming_its_log(tmp_path: Path, killer: list[int]) -> None:
    silent = Service("silent", tmp_path)
    process = silent.start([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
    assert process is not None
    killer.append(process.pid)
    url = f"http://127.0.0.1:{free_port()}/health"
    expected = rf"the silent server did not answer {url} within 1 s: see {silent.log_file}"
    with pytest.raises(ServiceError, match=expected):
        silent.wait_until_healthy(url, "the silent server", 1, process)
    # Without a process to watch (a service found running), only the URL is polled; a hint follows the log.
    with pytest.raises(ServiceError, match=r"within 1 s: see .*silent\.log; try again"):
        wait_until_healthy(url, "the silent server", 1, log=silent.log_file, hint="try again")
    assert silent.stop(GRACE_SECONDS)


def test_stop_kills_a_process_group_that_ignores_term_after_the_grace_period(tmp_path: Path, killer: list[int]) -> None:
    stubborn = Service("stubborn", tmp_path)
    process = stubborn.start([sys.executable, "-c", STUBBORN], dict(os.environ))
    assert process is not None
    killer.append(process.pid)
    child = int(wait_for_line(stubborn.log_file, "ready").split()[1])
    killer.append(child)
    started = time.monotonic()
    assert stubborn.stop(GRACE_SECONDS)
    assert time.monotonic() - started >= GRACE_SECONDS  # TERM first, and a grace period before KILL
    # the forked child too: the whole group
    assert wait_until_gone(process.pid, GONE_SECONDS) and wait_until_gone(child, GONE_SECONDS)


def test_a_stale_pid_file_is_removed_and_the_service_starts_again(tmp_path: Path, killer: list[int]) -> None:
    service = Service("restarted", tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    service.pid_file.write_text(f"{gone.pid}\n")  # left by a service that died (kill -9, a reboot)
    assert service.running_pid() is None and not service.pid_file.exists()
    service.pid_file.write_text("not a pid\n")
    assert service.running_pid() is None
    process = service.start([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
    assert process is not None
    killer.append(process.pid)
    assert service.running_pid() == process.pid
    assert service.stop(GRACE_SECONDS) and wait_until_gone(process.pid, GONE_SECONDS)


def test_a_pid_file_naming_a_reused_pid_is_stale_and_its_process_is_left_alone(
    tmp_path: Path, killer: list[int]
) -> None:
    """A pid the system gave to another process since: it does not lead its own session, as every
    service started by the supervisor does, so it is neither reported running nor signalled."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # in this test's group
    killer.append(stranger.pid)
    service = Service("reused", tmp_path)
    service.pid_file.write_text(f"{stranger.pid}\n")
    assert service.running_pid() is None and not service.pid_file.exists()
    service.pid_file.write_text(f"{stranger.pid}\n")
    assert service.stop(GRACE_SECONDS) is False
    time.sleep(0.2)
    assert stranger.poll() is None  # still running: nothing was sent to it


def group_leader(killer: list[int]) -> subprocess.Popen[bytes]:
    """A process leading its own process group, as a shell's job does, but not its own session (it is
    in this test's session): a pid that a service's pid file may name once the service is gone."""
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], process_group=0)
    killer.append(leader.pid)
    assert os.getpgid(leader.pid) == leader.pid and os.getsid(leader.pid) != leader.pid
    return leader


def test_a_pid_file_naming_a_reused_pid_of_a_job_control_group_leader_is_stale(
    tmp_path: Path, killer: list[int]
) -> None:
    """A reused pid that leads a process group (a shell's job) is not the service: its start time differs
    from the one recorded, and a pid file without one names it only while it leads its own session.
    `make down` must never kill that job's group."""
    leader = group_leader(killer)
    service = Service("reused", tmp_path)
    started = start_time(leader.pid)
    assert started is not None
    service.pid_file.write_text(f"{leader.pid} {started - 1}\n")  # the service that had the pid started earlier
    assert service.running_pid() is None and not service.pid_file.exists()
    service.pid_file.write_text(f"{leader.pid}\n")  # written before pid files held start times
    assert service.running_pid() is None and not service.pid_file.exists()
    for text in (f"{leader.pid} {started - 1}\n", f"{leader.pid}\n"):
        service.pid_file.write_text(text)
        assert service.stop(GRACE_SECONDS) is False
    time.sleep(0.2)
    assert leader.poll() is None  # still running: nothing was sent to its group


def test_a_pid_file_records_the_start_time_that_names_the_service(tmp_path: Path, killer: list[int]) -> None:
    service = Service("timed", tmp_path)
    process = service.start([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
    assert process is not None
    killer.append(process.pid)
    assert service.pid_file.read_text().split() == [str(process.pid), str(start_time(process.pid))]
    assert service.running_pid() == process.pid
    service.pid_file.write_text(f"{process.pid}\n")  # an older pid file: the service leads its session
    assert service.running_pid() == process.pid
    assert service.stop(GRACE_SECONDS) and wait_until_gone(process.pid, GONE_SECONDS)


def test_stop_gives_up_with_an_error_on_a_group_that_outlives_the_kill(
    tmp_path: Path, killer: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process group that SIGKILL does not empty (here: an exited member that its parent, this test,
    never reaps) is an error after a deadline, not an endless wait."""
    monkeypatch.setattr(supervisor, "KILL_WAIT_SECONDS", GRACE_SECONDS)
    leader = group_leader(killer)
    member = subprocess.Popen([sys.executable, "-c", "pass"], process_group=leader.pid)  # a zombie in the group
    deadline = time.monotonic() + START_SECONDS
    while running(member.pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    try:
        with pytest.raises(ServiceError, match=f"process group {leader.pid} is still running"):
            stop_process_group(leader.pid, GRACE_SECONDS)
        assert time.monotonic() - started < GRACE_SECONDS + GRACE_SECONDS + GONE_SECONDS
        assert wait_until_gone(leader.pid, GONE_SECONDS)
    finally:
        member.wait()


# A service that, on TERM, notes which other services had been sent TERM and which had exited: it waits
# up to PEER_SECONDS for its peer's TERM (a peer stopped at the same time gets it at once), then says
# "exited" in a marker file and exits. argv: its folder, its name, its peer's name ("" for none).
NOTING = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    folder, name, peer = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    def noted(*_):
        (folder / f"{name}.term").touch()
        deadline = time.monotonic() + 3.0
        while peer and not (folder / f"{peer}.term").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        seen = sorted(path.stem for path in folder.glob("*.term") if path.stem != name)
        exited = sorted(path.stem for path in folder.glob("*.exited"))
        (folder / f"{name}.noted").write_text(f"{','.join(seen)} {','.join(exited)}")
        (folder / f"{name}.exited").touch()
        sys.exit(0)
    signal.signal(signal.SIGTERM, noted)
    print("ready", flush=True)
    time.sleep(120)
    """
)


def test_services_of_a_tier_stop_at_once_and_tiers_one_after_the_other(tmp_path: Path, killer: list[int]) -> None:
    """`make down` stops the clients together, then the servers together: within a tier every service
    has been sent TERM before any has exited (each saw its peer's TERM), and a later tier's service
    gets TERM only once the earlier tier has exited."""
    markers = tmp_path / "markers"
    markers.mkdir()
    peers = {"worker": "scorer", "scorer": "worker", "server": ""}
    services = {name: Service(name, tmp_path) for name in peers}
    for name, service in services.items():
        process = service.start([sys.executable, "-c", NOTING, str(markers), name, peers[name]], dict(os.environ))
        assert process is not None
        killer.append(process.pid)
        wait_for_line(service.log_file, "ready")
    stopped = supervisor.stop_services(
        [services["worker"], services["scorer"]], [services["server"]], grace_seconds=START_SECONDS
    )
    assert stopped == ["worker", "scorer", "server"]
    noted = {name: (markers / f"{name}.noted").read_text().split(" ") for name in peers}
    assert noted["worker"][0] == "scorer" and noted["scorer"][0] == "worker"  # sent TERM together
    assert noted["server"] == ["scorer,worker", "scorer,worker"]  # after both had exited

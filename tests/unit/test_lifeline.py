"""A stage dies with DVC (also through a `sh -c` that does not exec), guarded children (Prefect's
temporary server) die with their owner even on `kill -9`, and two trainings never share a
checkpoint folder. Every case runs real processes and kills them with SIGKILL."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.runtime.lifeline import LAUNCHED_BY_DVC_VARIABLE, die_with_parent, parent_of, process_name
from tasks.training.checkpoint_lock import checkpoint_folder_lock, lock_file_of
from tasks.workspace.errors import TrainingBusyError
from tasks.workspace.locks import holder_file
from tests.support.processes import running, wait_until_gone

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEATH_SECONDS = 5.0  # how soon an orphan must be gone
START_SECONDS = 30.0  # a Python child importing little starts in well under this
DVC = str(Path(sys.executable).with_name("dvc"))
SHELL = "/bin/sh"  # dash on Debian: runs `-c` commands as a child instead of exec'ing them
GRACE_SECONDS = 2.0

STAGE_LIKE = textwrap.dedent(  # writes its pid into the folder argv[1], then sleeps
    f"""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {str(PROJECT_ROOT)!r})
    from tasks.runtime.lifeline import die_with_parent
    out = Path(sys.argv[1])
    assert die_with_parent(grace_seconds={GRACE_SECONDS})
    (out / "pid").write_text(str(__import__("os").getpid()))
    try:
        time.sleep(120)
    finally:
        (out / "cleaned-up").write_text("yes")  # the graceful path: `with` blocks and atexit run
    """
)


def wait_for_file(path: Path, seconds: float = START_SECONDS) -> str:
    deadline = time.monotonic() + seconds
    while not path.is_file() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


@pytest.fixture
def killer() -> Iterator[list[int]]:
    """Pids to SIGKILL at the end of the test whatever happened, so no test leaves processes behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("through_shell", [True, False], ids=["sh -c (no exec)", "direct child"])
def test_a_stage_dies_when_dvc_is_killed(tmp_path: Path, killer: list[int], through_shell: bool) -> None:
    stage = [sys.executable, "-c", STAGE_LIKE, str(tmp_path)]
    command = [SHELL, "-c", shlex.join(stage)] if through_shell else stage
    # A stand-in for `dvc repro`: it runs the stage command (through a shell, as DVC does) and waits.
    fake_dvc = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess; subprocess.run({command!r})"],
        env={**os.environ, LAUNCHED_BY_DVC_VARIABLE: "train"},
        stderr=subprocess.DEVNULL,
    )
    killer.append(fake_dvc.pid)
    stage_pid = int(wait_for_file(tmp_path / "pid"))
    killer.append(stage_pid)
    if through_shell:  # the case that defeats a parent-death signal: the shell lives on after DVC dies
        assert process_name(parent_of(stage_pid)) == "sh"
    fake_dvc.send_signal(signal.SIGKILL)
    fake_dvc.wait()
    assert wait_until_gone(stage_pid, DEATH_SECONDS), "the stage outlived the process that ran it"
    assert (tmp_path / "cleaned-up").is_file(), "the stage was killed without its cleanup running"


def test_watched_ancestors_look_through_a_shell() -> None:
    probe = (
        f"import sys; sys.path.insert(0, {str(PROJECT_ROOT)!r}); "
        "from tasks.runtime.lifeline import watched_ancestors; print(*watched_ancestors())"
    )
    output = subprocess.run(
        [SHELL, "-c", shlex.join([sys.executable, "-c", probe])], capture_output=True, text=True, check=True
    ).stdout
    shell, *rest = (int(pid) for pid in output.split())
    assert process_name(shell) == "" and rest == [os.getpid()]  # the shell (gone by now), then its parent


def test_a_stage_started_by_hand_is_not_tied_to_its_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LAUNCHED_BY_DVC_VARIABLE, raising=False)
    assert die_with_parent() is False  # `nohup python -m flows.train &` must survive its shell


OWNER = textwrap.dedent(
    f"""
    import subprocess, sys, time
    from pathlib import Path
    sys.path.insert(0, {str(PROJECT_ROOT)!r})
    from tasks.services.supervisor import guard_children
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    guard_children([server.pid])
    Path(sys.argv[1]).write_text(str(server.pid))
    time.sleep(120)
    """
)


def test_a_guarded_child_dies_when_its_owner_is_killed(tmp_path: Path, killer: list[int]) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "child")])
    killer.append(owner.pid)
    child = int(wait_for_file(tmp_path / "child"))
    killer.append(child)
    time.sleep(0.5)  # the watcher has started and opened its pidfds
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert wait_until_gone(child, DEATH_SECONDS), "the child outlived its owner's kill -9"


@pytest.mark.slow
def test_prefects_temporary_server_dies_with_a_killed_stage(tmp_path: Path, killer: list[int]) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(PROJECT_ROOT)!r})
        from tasks.runtime.prefect_api import prefect_api_for_this_run
        with prefect_api_for_this_run() as server:
            Path(sys.argv[1]).write_text(str(server.pid))
            time.sleep(300)
        """
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    environment.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    stage = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "server")], env=environment)
    killer.append(stage.pid)
    server = int(wait_for_file(tmp_path / "server", seconds=200))
    killer.append(server)
    assert running(server)
    stage.send_signal(signal.SIGKILL)
    stage.wait()
    assert wait_until_gone(server, DEATH_SECONDS + 5), "Prefect's temporary server outlived the killed stage"


HOLDER = textwrap.dedent(
    f"""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {str(PROJECT_ROOT)!r})
    from tasks.training.checkpoint_lock import checkpoint_folder_lock
    with checkpoint_folder_lock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_two_trainings_never_share_a_checkpoint_folder(tmp_path: Path, killer: list[int]) -> None:
    folder = tmp_path / "checkpoints" / "train"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    killer.append(holder.pid)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    busy = pytest.raises(TrainingBusyError, match=rf"pid {holder.pid} on .* since .*{folder}")
    with busy, checkpoint_folder_lock(folder, timeout_seconds=0.5):
        pytest.fail("a second training got the checkpoint folder")
    holder.send_signal(signal.SIGKILL)  # the kernel releases the lock of a killed holder
    holder.wait()
    with checkpoint_folder_lock(folder, timeout_seconds=5):
        assert f'"pid": {os.getpid()}' in holder_file(lock_file_of(folder)).read_text()


def test_a_stage_dies_when_dvc_repro_is_killed(tmp_path: Path, killer: list[int]) -> None:
    """The reported case, with the real DVC: `kill -9` of `dvc repro` alone must not orphan the stage.
    SHELL=/bin/sh makes DVC run the command through dash, which keeps a shell between the two."""
    (tmp_path / "stage.py").write_text(STAGE_LIKE)
    (tmp_path / "dvc.yaml").write_text(f"stages:\n  train:\n    cmd: {shlex.quote(sys.executable)} stage.py out\n")
    (tmp_path / "out").mkdir()
    environment = {**os.environ, "SHELL": SHELL, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=tmp_path, env=environment, check=True)
    dvc = subprocess.Popen(
        [DVC, "repro"], cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killer.append(dvc.pid)
    stage_pid = int(wait_for_file(tmp_path / "out" / "pid"))
    killer.append(stage_pid)
    dvc.send_signal(signal.SIGKILL)
    dvc.wait()
    assert wait_until_gone(stage_pid, DEATH_SECONDS), "the stage outlived `dvc repro`"
    assert (tmp_path / "out" / "cleaned-up").is_file()

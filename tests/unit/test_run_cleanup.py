"""Failed and abandoned MLflow runs end FAILED or KILLED, and a model whose logging fails (a full
disk) leaves no partial artifacts and no half-registered version. A real SQLite tracking store in
a tmp folder; the full disk is a fault injected into the local artifact store's copy."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient

from tasks.registration.registry import (
    PENDING,
    TAG_REGISTRATION,
    mark_registered,
    pending_tags,
    remove_abandoned_versions,
    version_removed_on_failure,
)
from tasks.tracking.epochs import log_missing_epochs
from tasks.tracking.runs import (
    TAG_HOST,
    TAG_PID,
    end_abandoned_runs,
    model_artifacts_removed_on_failure,
    process_tags,
)
from tasks.workspace.errors import ArtifactStoreError


class Echo(mlflow.pyfunc.PythonModel):
    """The smallest pyfunc: returns its input."""

    def predict(self, context: object, model_input: list[str], params: dict | None = None) -> list[str]:
        return model_input


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(experiment id, artifact folder) of a fresh SQLite tracking store; the previous URI is restored."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    artifacts = tmp_path / "artifacts"
    experiment_id = mlflow.create_experiment("cleanup", artifact_location=artifacts.as_uri())
    yield experiment_id, artifacts
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_runs_left_running_by_dead_processes_end_killed(store: tuple[str, Path]) -> None:
    experiment_id, _ = store
    client = MlflowClient()
    here = socket.gethostname()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs = {
            "dead": client.create_run(experiment_id, tags={TAG_PID: str(dead_pid()), TAG_HOST: here}),
            "alive": client.create_run(experiment_id, tags={TAG_PID: str(alive.pid), TAG_HOST: here}),
            "other host": client.create_run(experiment_id, tags={TAG_PID: str(dead_pid()), TAG_HOST: "elsewhere"}),
            "untagged": client.create_run(experiment_id),
            "this process": client.create_run(experiment_id, tags=process_tags()),
        }
        ended = end_abandoned_runs(experiment_id)
    finally:
        alive.kill()
        alive.wait()
    status = {name: client.get_run(run.info.run_id).info.status for name, run in runs.items()}
    assert ended == [runs["dead"].info.run_id]
    assert status == {
        "dead": "KILLED",
        "alive": "RUNNING",
        "other host": "RUNNING",
        "untagged": "RUNNING",
        "this process": "RUNNING",
    }


def test_a_run_killed_by_sigkill_is_killed_at_the_next_start_and_can_resume(store: tuple[str, Path]) -> None:
    experiment_id, _ = store
    script = (
        "import mlflow, os, signal, sys; from tasks.tracking.runs import process_tags; "
        f"mlflow.set_tracking_uri({mlflow.get_tracking_uri()!r}); "
        f"run = mlflow.start_run(experiment_id={experiment_id!r}, tags=process_tags()); "
        "print(run.info.run_id, flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert killed.returncode == -9, killed.stderr
    run_id = killed.stdout.strip()
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could end it
    assert end_abandoned_runs(experiment_id) == [run_id]
    assert client.get_run(run_id).info.status == "KILLED"
    with mlflow.start_run(run_id=run_id):  # a resumed training reopens the same run
        assert client.get_run(run_id).info.status == "RUNNING"
    assert client.get_run(run_id).info.status == "FINISHED"
    with pytest.raises(ZeroDivisionError), mlflow.start_run(run_id=run_id):  # a resumed run that fails
        _ = 1 / 0
    assert client.get_run(run_id).info.status == "FAILED"


def copy_one_file_then_fill_the_disk(self: LocalArtifactRepository, local_dir: str, artifact_path=None) -> None:
    """Fault injection: the artifact store's copy writes one file, then the disk is full."""
    target = Path(self.artifact_dir, artifact_path or "")
    target.mkdir(parents=True, exist_ok=True)
    first = sorted(path for path in Path(local_dir).rglob("*") if path.is_file())[0]
    shutil.copy2(first, target / first.name)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def test_a_full_disk_while_logging_a_model_leaves_no_partial_files_and_fails_the_run(
    store: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id, artifacts = store
    with mlflow.start_run(experiment_id=experiment_id):
        kept = mlflow.pyfunc.log_model(name="earlier", python_model=Echo(), pip_requirements=[])
    kept_files = files_under(artifacts)
    assert kept_files
    monkeypatch.setattr(LocalArtifactRepository, "log_artifacts", copy_one_file_then_fill_the_disk)
    full_disk = pytest.raises(ArtifactStoreError, match=r"cannot write the test model to .*No space left on device")
    with (
        full_disk,
        mlflow.start_run(experiment_id=experiment_id) as run,
        model_artifacts_removed_on_failure("test model"),
    ):
        mlflow.pyfunc.log_model(name="failing", python_model=Echo(), pip_requirements=[])
    failed = mlflow.last_logged_model()
    assert failed is not None and failed.model_id != kept.model_id
    assert str(failed.status) == "FAILED"
    assert files_under(artifacts) == kept_files  # the earlier model intact, nothing of the failed one
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_a_version_whose_alias_cannot_be_set_is_deleted(store: tuple[str, Path]) -> None:
    experiment_id, _ = store
    client = MlflowClient()
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
    champion = mlflow.register_model(info.model_uri, "cleanup-model")
    client.set_registered_model_alias("cleanup-model", "champion", champion.version)
    new = mlflow.register_model(info.model_uri, "cleanup-model")
    failing = pytest.raises(RuntimeError, match="alias step failed")
    with failing, version_removed_on_failure(client, "cleanup-model", new.version):
        raise RuntimeError("alias step failed")
    versions = {version.version for version in client.search_model_versions("name = 'cleanup-model'")}
    assert versions == {champion.version}
    assert client.get_model_version_by_alias("cleanup-model", "champion").version == champion.version


def test_versions_left_pending_by_gone_processes_are_deleted_or_completed(store: tuple[str, Path]) -> None:
    """What a register run cut short leaves (a lost server, a kill) is cleared by the next one: a pending
    version without an alias is deleted, one that got its alias keeps it and loses the pending tag;
    versions of live processes, of other hosts, and completed ones are left alone."""
    experiment_id, _ = store
    client = MlflowClient()
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
    here = socket.gethostname()
    gone = {TAG_REGISTRATION: PENDING, TAG_PID: str(dead_pid()), TAG_HOST: here}
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tags = {
            "complete": {},
            "cut before its alias": gone,
            "cut after its alias": gone,
            "live process": {TAG_REGISTRATION: PENDING, TAG_PID: str(alive.pid), TAG_HOST: here},
            "other host": {**gone, TAG_HOST: "elsewhere"},
            "other host, with its alias": {**gone, TAG_HOST: "elsewhere"},
            "this process": pending_tags(),
        }
        versions = {
            name: mlflow.register_model(info.model_uri, "pending-model", tags=tag).version for name, tag in tags.items()
        }
        client.set_registered_model_alias("pending-model", "champion", versions["cut after its alias"])
        client.set_registered_model_alias("pending-model", "challenger", versions["other host, with its alias"])
        deleted = remove_abandoned_versions(client, "pending-model")
    finally:
        alive.kill()
        alive.wait()
    assert deleted == [str(versions["cut before its alias"])]
    left = {str(version.version): version for version in client.search_model_versions("name = 'pending-model'")}
    assert sorted(left) == sorted(str(number) for name, number in versions.items() if name != "cut before its alias")
    champion = client.get_model_version("pending-model", versions["cut after its alias"])
    assert champion.aliases == ["champion"] and TAG_REGISTRATION not in champion.tags
    # A version holding an alias was complete, whichever host registered it: its tag goes, so it can
    # never be taken for half-registered once its alias moves on.
    challenger = client.get_model_version("pending-model", versions["other host, with its alias"])
    assert challenger.aliases == ["challenger"] and TAG_REGISTRATION not in challenger.tags
    still_pending = {
        name
        for name, number in versions.items()
        if left.get(str(number)) and left[str(number)].tags.get(TAG_REGISTRATION) == PENDING
    }
    assert still_pending == {"live process", "other host", "this process"}
    mark_registered(client, "pending-model", versions["this process"])
    assert TAG_REGISTRATION not in client.get_model_version("pending-model", versions["this process"]).tags


@pytest.fixture
def unreachable_client(monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """A client of a tracking server that is gone (a port nothing listens on), without MLflow's retries."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return MlflowClient(tracking_uri=f"http://127.0.0.1:{port}", registry_uri=f"http://127.0.0.1:{port}")


def test_a_version_that_cannot_be_deleted_keeps_the_first_error(unreachable_client: MlflowClient) -> None:
    """Deleting the cut version fails too: the error raised is still the one that cut the
    registration, with a note that the next register run deletes the version."""
    with (
        pytest.raises(RuntimeError, match="alias step failed") as raised,
        version_removed_on_failure(unreachable_client, "lost-model", "3"),
    ):
        raise RuntimeError("alias step failed")
    assert any(
        "lost-model version 3 could not be deleted" in note and "next register run on this host deletes it" in note
        for note in raised.value.__notes__
    )


def test_a_lost_server_is_not_asked_to_delete_the_cut_version(unreachable_client: MlflowClient) -> None:
    """The alias step failed because the server is gone: no deletion is tried (it would wait out MLflow's
    retries a second time); the version stays pending for the next register run."""
    with pytest.raises(MlflowException) as lost:
        unreachable_client.get_registered_model("lost-model")
    with (
        pytest.raises(MlflowException) as raised,
        version_removed_on_failure(unreachable_client, "lost-model", "3"),
    ):
        raise lost.value
    assert raised.value.__notes__ == [
        "lost-model version 3 is left pending: the next register run on this host deletes it"
    ]


def test_a_model_logged_to_another_store_earlier_does_not_break_the_next_logging(tmp_path: Path) -> None:
    """MLflow remembers the last logged model's id per process, across tracking URIs (found in CI:
    `Logged model with ID ... not found` when two test modules used two stores)."""
    previous = mlflow.get_tracking_uri()
    try:
        for name in ("first", "second"):
            mlflow.set_tracking_uri(f"sqlite:///{tmp_path / name}.db")
            experiment_id = mlflow.create_experiment(name, artifact_location=(tmp_path / name).as_uri())
            with mlflow.start_run(experiment_id=experiment_id), model_artifacts_removed_on_failure("model"):
                info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
            assert MlflowClient().get_logged_model(info.model_id).name == "model"
    finally:
        mlflow.set_tracking_uri(previous)


def test_a_resumed_run_logs_the_epochs_its_cut_predecessor_did_not(store: tuple[str, Path]) -> None:
    """The checkpoint holds epochs 0-4; the cut run logged 0, 1 and 3 (its server died while logging 2,
    and 4 was never sent): the resumed run logs 2 and 4, and logs nothing twice."""
    experiment_id, _ = store
    client = MlflowClient()
    run = client.create_run(experiment_id)
    for step in (0, 1, 3):
        client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
        client.log_metric(run.info.run_id, "accuracy", 0.5, step=step)
    history = {"loss": [1.0, 0.5, 0.33, 0.25, 0.2], "accuracy": [0.5, 0.5, 0.6, 0.5, 0.7]}
    assert log_missing_epochs(run.info.run_id, history) == [2, 4]
    for name, values in history.items():
        logged = dict(
            sorted((metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, name))
        )
        assert sorted(logged) == [0, 1, 2, 3, 4], name  # each epoch once
        assert (logged[2], logged[4]) == pytest.approx((values[2], values[4])), name
    assert log_missing_epochs(run.info.run_id, history) == []  # a second resume logs nothing again

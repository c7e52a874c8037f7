"""The pipeline flow's helpers: overrides written like `dvc exp run -S`, the workspace lock, the report."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tasks.runtime.orchestration import (
    PipelineBusyError,
    StageFailedError,
    StageOutcome,
    dvc_repository,
    report_markdown,
    stage_is_stale,
    stage_records,
    try_example,
    workspace_lock,
)
from tasks.runtime.run_requests import apply_overrides
from tasks.workspace.errors import ConfigError
from tasks.workspace.locks import holder_file
from tests.conftest import PROJECT_ROOT

PARAMS = textwrap.dedent(
    """\
    # Parameters, grouped by stage.
    train:
      epochs: 10               # passes over the data
      mode: cached
    prepare:
      image_size: 75
    """
)


def project_params_copy(tmp_path: Path) -> Path:
    """The project's params.yaml (a complete, valid file with comments) copied into `tmp_path`."""
    return Path(shutil.copy2(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml"))


def test_overrides_change_values_and_keep_comments(tmp_path: Path) -> None:
    params_file = project_params_copy(tmp_path)
    applied = apply_overrides(params_file, {"train.epochs": 3, "prepare.image_size": 150})
    assert applied == ["train.epochs=3", "prepare.image_size=150"]
    text = params_file.read_text()
    params = yaml.safe_load(text)
    assert params["train"]["epochs"] == 3 and params["prepare"]["image_size"] == 150
    assert "# at most; early stopping ends sooner" in text and text.startswith("# Parameters")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]  # no temporary file left


def test_a_key_of_the_group_model_that_the_file_omits_can_be_set(tmp_path: Path) -> None:
    params_file = project_params_copy(tmp_path)
    apply_overrides(params_file, {"augment.rotation_degrees": 5.0})
    assert yaml.safe_load(params_file.read_text())["augment"] == {"preset": "signature", "rotation_degrees": 5.0}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"train.epochs": -5}, "train.epochs"),
        ({"prepare.image_size": "big"}, "prepare.image_size"),
        ({"prepare.image_size": 74}, "prepare.image_size"),
        ({"train.epochs": 2, "evaluate.top_k": 0}, "evaluate.top_k"),
        ({"register.metric": "accuracy"}, "register.metric"),
        ({"model.weights": "nowhere/inception_v3.h5"}, "model.weights"),  # a file that does not exist
    ],
)
def test_an_invalid_override_is_refused_and_the_file_untouched(
    tmp_path: Path, overrides: dict[str, object], named: str
) -> None:
    params_file = project_params_copy(tmp_path)
    before = params_file.read_bytes()
    with pytest.raises(ConfigError) as raised:
        apply_overrides(params_file, overrides)
    assert named in str(raised.value) and "is unchanged" in str(raised.value)
    assert params_file.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


def test_overrides_are_refused_when_the_rest_of_the_file_is_invalid(tmp_path: Path) -> None:
    params_file = project_params_copy(tmp_path)
    params_file.write_text(params_file.read_text().replace("calibrate:\n", "calibrate_typo:\n"))
    before = params_file.read_bytes()
    with pytest.raises(ConfigError, match=r"calibrate: missing parameter group"):
        apply_overrides(params_file, {"train.epochs": 2})
    assert params_file.read_bytes() == before


@pytest.mark.parametrize("key", ["train.epoch", "training.epochs", "train"])
def test_unknown_override_is_refused_and_the_file_untouched(tmp_path: Path, key: str) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(PARAMS)
    with pytest.raises(ConfigError, match="no such parameter"):
        apply_overrides(params_file, {key: 1})
    assert params_file.read_text() == PARAMS


def hold_lock(lock_file: Path, seconds: float) -> subprocess.Popen[str]:
    """A real second process that takes the workspace lock, says "held", keeps it `seconds`, then releases it."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from pathlib import Path
            from tasks.runtime.orchestration import workspace_lock
            with workspace_lock(Path({str(lock_file)!r}), 5, label="flow run 'holder-run'"):
                print("held", flush=True)
                time.sleep({seconds})
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_waits_then_fails_naming_the_holder(tmp_path: Path) -> None:
    lock_file = tmp_path / "data" / ".pipeline.lock"
    holder = hold_lock(lock_file, 30)
    said: list[str] = []
    holder_words = rf"flow run 'holder-run', pid {holder.pid} on {socket.gethostname()} since \d{{4}}-.*: .*python"
    try:
        started = time.monotonic()
        with (
            pytest.raises(PipelineBusyError, match=rf"another pipeline run holds .*\({holder_words}"),
            workspace_lock(lock_file, 1, announce=said.append),
        ):
            pass
        assert time.monotonic() - started >= 1
        assert len(said) == 1 and re.search(rf"waiting up to 1 s .*{holder_words}", said[0]), said
    finally:
        holder.kill()
        holder.wait()
    assert holder_file(lock_file).is_file()  # kill -9: the holder could not remove its record
    with workspace_lock(lock_file, 1, announce=said.append):  # released when its holder is gone
        assert f'"pid": {os.getpid()}' in holder_file(lock_file).read_text()
    assert len(said) == 1  # no wait, nothing said
    assert not holder_file(lock_file).exists()


def test_a_waiting_run_says_whom_it_waits_for_then_runs(tmp_path: Path) -> None:
    lock_file = tmp_path / "data" / ".pipeline.lock"
    holder = hold_lock(lock_file, 1)
    said: list[str] = []
    try:
        with workspace_lock(lock_file, 60, label="waiter", announce=said.append):
            assert holder.wait(timeout=30) == 0  # the holder had released the lock and finishes
            assert "waiter" in holder_file(lock_file).read_text()
    finally:
        holder.kill()
        holder.wait()
    assert len(said) == 1 and f"pid {holder.pid}" in said[0] and "holder-run" in said[0]


def fine_stage_repository(root: Path) -> dict[str, str]:
    """A DVC repository at `root` with one stage `fine` (a dependency, an output); returns the environment."""
    (root / "dvc.yaml").write_text(
        "stages:\n  fine:\n    cmd: python -c \"open('fine.txt', 'w').write('ok')\"\n"
        "    deps: [input.txt]\n    outs: [fine.txt]\n"
    )
    (root / "input.txt").write_text("in")  # a dependency: DVC resolves it from the working directory
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, env=environment, check=True)
    return environment


def test_dvc_decides_what_is_stale_and_records_what_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline flow asks DVC whether a stage is out of date, runs it itself, then has DVC record it
    (`dvc commit`, dvc.lock written when the run's block ends): afterwards `dvc status` is clean and the
    stage is no longer stale. From any working directory, another DVC repository's included (the
    project's own, as in the test suite)."""
    monkeypatch.chdir(PROJECT_ROOT)
    environment = fine_stage_repository(tmp_path)
    with dvc_repository(tmp_path, "stage 'fine'") as repository:
        assert stage_is_stale(repository, "fine")  # never ran
        with stage_records(repository) as record:
            (tmp_path / "fine.txt").write_text("ok")  # what the stage's command does
            record("fine")
            assert not (tmp_path / "dvc.lock").exists()  # written once, at the end of the block
    assert Path.cwd() == PROJECT_ROOT
    assert "fine.txt" in (tmp_path / "dvc.lock").read_text()
    status = subprocess.run(["dvc", "status"], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert "up to date" in status.stdout
    with dvc_repository(tmp_path, "stage 'fine'") as repository:
        assert not stage_is_stale(repository, "fine")
        (tmp_path / "fine.txt").write_text("changed")
        assert stage_is_stale(repository, "fine")


def two_stage_repository(root: Path) -> dict[str, str]:
    """`fine_stage_repository` plus a stage `second` downstream of `fine` (it reads fine.txt)."""
    environment = fine_stage_repository(root)
    with (root / "dvc.yaml").open("a") as dvc_file:
        dvc_file.write(
            "  second:\n    cmd: python -c \"open('second.txt', 'w').write('ok')\"\n"
            "    deps: [fine.txt]\n    outs: [second.txt]\n"
        )
    return environment


def test_stages_that_ran_before_a_failure_are_recorded_and_the_failed_one_is_not(tmp_path: Path) -> None:
    """dvc.lock is written once per run, also when a later stage fails: what ran before stays recorded,
    so the next run (or `dvc repro`) reruns only the failed stage."""
    environment = two_stage_repository(tmp_path)
    with (
        dvc_repository(tmp_path, "the pipeline") as repository,
        pytest.raises(RuntimeError, match="second failed"),
        stage_records(repository) as record,
    ):
        (tmp_path / "fine.txt").write_text("ok")
        record("fine")
        raise RuntimeError("second failed")  # the next stage's error
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"fine"}
    status = subprocess.run(["dvc", "status"], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert "second" in status.stdout and "fine:" not in status.stdout


def test_several_stages_are_written_in_one_rewrite_of_the_lock_file(tmp_path: Path) -> None:
    """Two recorded stages, one lock file as `dvc commit` of each would leave it: both up to date after."""
    environment = two_stage_repository(tmp_path)
    with dvc_repository(tmp_path, "the pipeline") as repository, stage_records(repository) as record:
        (tmp_path / "fine.txt").write_text("ok")
        record("fine")
        assert stage_is_stale(repository, "second")  # never ran; fine's record is not written yet
        (tmp_path / "second.txt").write_text("ok")
        record("second")
    assert list(yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]) == ["fine", "second"]
    status = subprocess.run(["dvc", "status"], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert "up to date" in status.stdout


def test_a_dvc_repro_started_while_a_stage_runs_is_refused(tmp_path: Path) -> None:
    """DVC's lock is held from the check to the record, as `dvc repro` holds it: a concurrent `dvc repro`
    in the workspace stops at once instead of running the same stage beside the pipeline's."""
    environment = fine_stage_repository(tmp_path)
    with dvc_repository(tmp_path, "the pipeline"):
        concurrent = subprocess.run(["dvc", "repro"], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert concurrent.returncode != 0 and "lock" in (concurrent.stdout + concurrent.stderr).lower()
    assert not (tmp_path / "fine.txt").exists()


def test_dvc_errors_name_the_stage_or_the_folder(tmp_path: Path) -> None:
    with (
        pytest.raises(StageFailedError, match=r"the pipeline: DVC cannot work in .*"),
        dvc_repository(tmp_path, "the pipeline"),
    ):
        pass  # no DVC repository here
    fine_stage_repository(tmp_path)
    with dvc_repository(tmp_path, "the pipeline") as repository:
        with pytest.raises(StageFailedError, match=r"stage 'missing': DVC cannot tell whether it is up to date"):
            stage_is_stale(repository, "missing")
        with (
            pytest.raises(StageFailedError, match=r"stage 'fine' ran, but DVC could not record it"),
            stage_records(repository) as record,
        ):
            record("fine")  # its output was never written
    assert not (tmp_path / "dvc.lock").exists()


def test_report_lists_stages_metrics_and_the_decision() -> None:
    outcomes = [StageOutcome("download", False, 0.5), StageOutcome("train", True, 12.0)]
    metrics = {
        "evaluate": {"accuracy": 0.9, "f1_weighted": 0.88, "eer_skilled_a_posteriori": 0.2, "auc_skilled": None},
        "calibrate": {
            "threshold": 0.6,
            "frr": 0.1,
            "far_skilled": 0.05,
            "partitions_far_skilled_mean": 0.07,
            "partitions_far_skilled_ci95_low": 0.04,
            "partitions_far_skilled_ci95_high": 0.1,
            "unenrolled_accepted": 0.02,
        },
        "register": {"model_name": "m", "version": "2", "alias": "champion", "reason": "no champion yet"},
    }
    text = report_markdown(outcomes, metrics, "http://127.0.0.1:5000/#/experiments/1/runs/abc")
    assert "| download | up to date | 0.5 |" in text and "| train | yes | 12.0 |" in text
    assert "accuracy 0.900" in text and "EER (a posteriori) 20.0%, per-writer thresholds n/a, AUC n/a" in text
    assert "FAR skilled 5.0%" in text and "FAR skilled 7.0% (95% interval 4.0%-10.0%)" in text
    assert "answered as an enrolled writer: 2.0%" in text
    assert "m version 2: **champion** (no champion yet)" in text
    assert "runs/abc" in text
    assert "sigpipe" not in text  # no example without a manifest


def test_the_try_example_is_a_fixed_test_genuine_signature_with_its_writer() -> None:
    rows = [
        {"path": "g/2/1.tif", "writer": "2", "kind": "genuine", "split": "test"},
        {"path": "g/1/5.tif", "writer": "1", "kind": "genuine", "split": "train"},
        {"path": "f/1/1.tif", "writer": "1", "kind": "skilled", "split": "test"},
        {"path": "g/1/9.tif", "writer": "1", "kind": "genuine", "split": "test"},
    ]
    assert try_example(rows) == ("g/1/9.tif", "1")
    assert try_example(rows[1:3]) is None
    text = report_markdown([], {}, None, ("g/1/9.tif", "1"))
    assert "sigpipe predict g/1/9.tif" in text and "sigpipe verify g/1/9.tif --writer 1" in text


@pytest.mark.parametrize(
    ("stale", "may_run"),
    [
        (set(), set()),
        ({"check_params"}, {"check_params"}),  # its marker never changes: nothing downstream reruns
        ({"check_params", "calibrate"}, {"check_params", "calibrate", "register"}),
        ({"train"}, {"train", "evaluate", "calibrate", "package", "register"}),
        ({"prepare"}, {"prepare", "embed", "train", "evaluate", "calibrate", "package", "register"}),
    ],
)
def test_the_stages_a_run_may_execute_are_the_stale_ones_and_those_downstream(
    stale: set[str], may_run: set[str]
) -> None:
    """On DVC's graph of the project's own dvc.yaml: a calibrate-only change reaches register, not package."""
    from dvc.repo import Repo

    from tasks.runtime.orchestration import may_run as stages_reached

    with Repo(str(PROJECT_ROOT)) as repository:
        assert stages_reached(repository.index.graph, stale, {"check_params"}) == may_run


def test_without_a_dvc_repository_no_stage_is_reported(tmp_path: Path) -> None:
    """No DVC repository (DVC cannot tell): nothing is reported, the stage runs say why."""
    from tasks.runtime.orchestration import stages_that_may_run

    assert stages_that_may_run(tmp_path, {"check_params"}) == set()


def test_the_stage_libraries_belong_to_pipeline_stages_and_can_be_found() -> None:
    """`flows.pipeline.STAGE_LIBRARIES` names stages of the pipeline and modules that exist (`find_spec`
    imports a dotted name's parent packages, not the module itself)."""
    from importlib.util import find_spec

    from flows.pipeline import STAGE_LIBRARIES
    from tasks.runtime.orchestration import PIPELINE_STAGES

    assert set(STAGE_LIBRARIES) <= set(PIPELINE_STAGES)
    assert all(find_spec(name) is not None for modules in STAGE_LIBRARIES.values() for name in modules)

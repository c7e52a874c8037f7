"""The pipeline flow's helpers: overrides written like `dvc exp run -S`, the workspace lock, the report."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError
from tasks.orchestration import (
    PipelineBusyError,
    StageOutcome,
    apply_overrides,
    report_markdown,
    try_example,
    workspace_lock,
)

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


def test_overrides_change_values_and_keep_comments(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(PARAMS)
    applied = apply_overrides(params_file, {"train.epochs": 3, "prepare.image_size": 150})
    assert applied == ["train.epochs=3", "prepare.image_size=150"]
    text = params_file.read_text()
    assert yaml.safe_load(text) == {"train": {"epochs": 3, "mode": "cached"}, "prepare": {"image_size": 150}}
    assert "# passes over the data" in text and text.startswith("# Parameters")


@pytest.mark.parametrize("key", ["train.epoch", "training.epochs", "train"])
def test_unknown_override_is_refused_and_the_file_untouched(tmp_path: Path, key: str) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(PARAMS)
    with pytest.raises(ConfigError, match="no such parameter"):
        apply_overrides(params_file, {key: 1})
    assert params_file.read_text() == PARAMS


def test_a_second_run_waits_then_fails_clearly(tmp_path: Path) -> None:
    lock_file = tmp_path / "data" / ".pipeline.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from pathlib import Path
            from tasks.orchestration import workspace_lock
            with workspace_lock(Path({str(lock_file)!r}), 5):
                print("held", flush=True)
                time.sleep(30)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with (
            pytest.raises(PipelineBusyError, match=r"another pipeline run holds .*pid \d+"),
            workspace_lock(lock_file, 1),
        ):
            pass
        assert time.monotonic() - started >= 1
    finally:
        holder.kill()
        holder.wait()
    with workspace_lock(lock_file, 1):  # released when its holder is gone
        assert lock_file.read_text().startswith("pid ")


def test_report_lists_stages_metrics_and_the_decision() -> None:
    outcomes = [StageOutcome("download", False, 0.5), StageOutcome("train", True, 12.0)]
    metrics = {
        "evaluate": {"accuracy": 0.9, "f1_weighted": 0.88, "eer_skilled": 0.2, "auc_skilled": None},
        "calibrate": {"temperature": 1.5, "threshold": 0.6, "frr": 0.1, "far_skilled": 0.05},
        "register": {"model_name": "m", "version": "2", "alias": "champion", "reason": "no champion yet"},
    }
    text = report_markdown(outcomes, metrics, "http://127.0.0.1:5000/#/experiments/1/runs/abc")
    assert "| download | up to date | 0.5 |" in text and "| train | yes | 12.0 |" in text
    assert "accuracy 0.900" in text and "EER (a posteriori) 20.0%, AUC n/a" in text
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

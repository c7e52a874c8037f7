"""`dvc metrics show` fits a terminal: the files dvc.yaml declares as metrics hold the headline
numbers only (DVC prints one table with a column per key of every file), the rest are details.
The real `dvc metrics show`, on the project's dvc.yaml, in a tmp DVC repository."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tasks.workspace.files import write_metrics
from tests.conftest import PROJECT_ROOT

TERMINAL_COLUMNS = 120
# As wide as real values get: DVC shows 5 significant digits ("0.012346"); the longer alias.
WIDEST_NUMBER = 0.0123456789
WIDEST_TEXT = {"alias": "challenger", "version": "999"}
DETAIL = {"verification_a_posteriori": {"skilled": {"eer": WIDEST_NUMBER, "threshold": WIDEST_NUMBER}}}
DVC = str(Path(sys.executable).with_name("dvc"))


def declared_metrics() -> dict[str, list[str]]:
    """Stage name to the metrics files dvc.yaml declares for it."""
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    return {
        stage: [entry if isinstance(entry, str) else next(iter(entry)) for entry in spec["metrics"]]
        for stage, spec in stages.items()
        if spec.get("metrics")
    }


def test_dvc_metrics_show_fits_a_terminal(tmp_path: Path) -> None:
    declared = declared_metrics()
    assert set(declared) == {"evaluate", "calibrate", "register"}
    shutil.copy2(PROJECT_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    headline_keys = set()
    for stage, files in declared.items():
        headline = importlib.import_module(f"flows.{stage}").HEADLINE_METRICS  # what the stage writes there
        headline_keys.update(headline)
        metrics = {key: WIDEST_TEXT.get(key, WIDEST_NUMBER) for key in headline}
        for name in files:
            write_metrics(tmp_path / name, tmp_path / f"{name}.details", {**metrics, **DETAIL}, headline)
    environment = {**os.environ, "DVC_NO_ANALYTICS": "true"}
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=tmp_path, env=environment, check=True)
    shown = subprocess.run(
        [DVC, "metrics", "show"], cwd=tmp_path, env=environment, capture_output=True, text=True, check=True
    ).stdout
    lines = shown.splitlines()
    header = lines[0].split()
    assert header[0] == "Path" and set(header[1:]) == headline_keys, shown  # no detail reached the table
    assert len(lines) == 1 + sum(len(files) for files in declared.values()), shown
    assert max(len(line) for line in lines) <= TERMINAL_COLUMNS, shown

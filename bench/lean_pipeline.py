"""What the pipeline costs against the work it does, before and after a change, in one script (issue 25).

For each code version (`--before`, a git revision, and the working tree's HEAD), in a fresh copy of
that version's files (`git archive`), with this interpreter and no Prefect API configured (what a new
user has):
1. the demo pipeline after the install: `python -m flows.pipeline` on the generated dataset;
2. after changing only a `calibrate` parameter (`calibrate.target_far`, objective `target_far`):
   `dvc repro` end to end;
3. with `--cedar FOLDER`: `dvc repro` of CEDAR at 150 px from nothing, against the embedding's own time
   (the embed stage's `embed_seconds`; before the embed stage existed, the train stage's).
Versions alternate within each round (`--rounds`), so a busy machine slows both alike; medians are
reported with every round's value, and the ratios after / before. `--before-python` runs the before
version with another environment's interpreter (and its `dvc`): the packages that version declared,
when a change declares a new one.

Usage: python bench/lean_pipeline.py --before 97f28c4 [--cedar ../shared/datasets/cedar] [--rounds 1]
       [--before-python OTHER/.venv/bin/python] [--results bench/results/lean_pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE = PROJECT_ROOT / "bench" / "results" / "lean_pipeline.json"
AFTER = "HEAD"
CALIBRATE_CHANGE = {"objective": "target_far", "target_far": 0.2}
CEDAR_PARAMS = {
    "data": {"source": "local", "layout": "cedar"},
    "prepare": {"image_size": 150},
}
EMBED_RUN_FILES = ("data/embed_run.json", "models/train_run.json")  # after, then before the embed stage


def workspace_of(revision: str, folder: Path) -> Path:
    """The files of `revision` in `folder`, as a git repository of its own (DVC needs one), no outputs."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x"], cwd=folder, input=archive, check=True)
    shutil.rmtree(folder / "mlruns", ignore_errors=True)
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(
            command,
            cwd=folder,
            check=True,
            env={
                **environment(),
                "GIT_AUTHOR_NAME": "bench",
                "GIT_AUTHOR_EMAIL": "bench@localhost",
                "GIT_COMMITTER_NAME": "bench",
                "GIT_COMMITTER_EMAIL": "bench@localhost",
            },
        )
    return folder


def environment(python: str = sys.executable) -> dict[str, str]:
    """`python`'s tools first on PATH, no Prefect API (each version starts what it needs)."""
    values = {**os.environ, "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    values.pop("PREFECT_API_URL", None)
    values.pop("MLFLOW_TRACKING_URI", None)
    return values


def timed(command: list[str], cwd: Path, python: str) -> float:
    """Wall seconds of `command` in `cwd` with `python`'s tools; stops the bench with its output when it fails."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=environment(python), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} in {cwd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def edit_params(params_file: Path, changes: dict[str, dict[str, object]]) -> None:
    params = yaml.safe_load(params_file.read_text())
    for group, values in changes.items():
        params.setdefault(group, {}).update(values)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def embed_seconds(workspace: Path) -> float:
    """The base's own embedding time in the last run (embed stage, or the train stage before it existed)."""
    for name in EMBED_RUN_FILES:
        path = workspace / name
        if path.is_file() and "embed_seconds" in (record := json.loads(path.read_text())):
            return float(record["embed_seconds"])
    return float("nan")


def demo_round(revision: str, scratch: Path, python: str) -> dict[str, float]:
    """The demo pipeline from a fresh copy, then `dvc repro` after a calibrate-only change."""
    workspace = workspace_of(revision, scratch / f"demo-{revision}")
    pipeline = timed([python, "-m", "flows.pipeline"], workspace, python)
    edit_params(workspace / "params.yaml", {"calibrate": CALIBRATE_CHANGE})
    calibrate_change = timed(["dvc", "repro"], workspace, python)
    return {"demo_pipeline_seconds": pipeline, "calibrate_change_repro_seconds": calibrate_change}


def cedar_round(revision: str, scratch: Path, cedar: Path, python: str) -> dict[str, float]:
    """`dvc repro` of CEDAR at 150 px from nothing, and the embedding's share of it."""
    workspace = workspace_of(revision, scratch / f"cedar-{revision}")
    edit_params(workspace / "params.yaml", {**CEDAR_PARAMS, "data": {**CEDAR_PARAMS["data"], "path": str(cedar)}})
    repro = timed(["dvc", "repro"], workspace, python)
    embedding = embed_seconds(workspace)
    return {"cedar_repro_seconds": repro, "cedar_embed_seconds": embedding, "cedar_repro_over_embed": repro / embedding}


def summary(rounds: list[dict[str, float]]) -> dict[str, object]:
    return {
        name: {"median": statistics.median(item[name] for item in rounds), "rounds": [item[name] for item in rounds]}
        for name in rounds[0]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision of the code to compare with")
    parser.add_argument("--cedar", type=Path, help="CEDAR folder: also time a CEDAR 150 px dvc repro from nothing")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="where to write the results (JSON)")
    parser.add_argument("--before-python", default=sys.executable, help="interpreter of the before version")
    arguments = parser.parse_args()
    versions = {"before": arguments.before, "after": AFTER}
    pythons = {"before": arguments.before_python, "after": sys.executable}
    measured: dict[str, list[dict[str, float]]] = {label: [] for label in versions}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(arguments.rounds):
            order = list(versions.items()) if round_index % 2 == 0 else list(versions.items())[::-1]
            for label, revision in order:
                folder = Path(scratch) / f"round{round_index}-{label}"
                figures = demo_round(revision, folder, pythons[label])
                if arguments.cedar:
                    figures.update(cedar_round(revision, folder, arguments.cedar.resolve(), pythons[label]))
                measured[label].append(figures)
                print(label, json.dumps({name: round(value, 1) for name, value in figures.items()}), flush=True)
    result = {
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
        "revisions": {
            label: subprocess.run(
                ["git", "rev-parse", "--short", revision], cwd=PROJECT_ROOT, capture_output=True, text=True
            ).stdout.strip()
            for label, revision in versions.items()
        },
        "pythons": pythons,
        **{label: summary(rounds) for label, rounds in measured.items()},
    }
    result["after_over_before"] = {
        name: result["after"][name]["median"] / result["before"][name]["median"] for name in result["after"]
    }
    arguments.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["after_over_before"], indent=2))


if __name__ == "__main__":
    main()

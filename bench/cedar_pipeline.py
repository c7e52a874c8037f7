"""The whole pipeline on CEDAR (download -> prepare -> embed -> train -> evaluate -> calibrate), measured.

Runs the stage flows in a scratch copy of the project with CEDAR as a local source, and prints
the evaluation and calibration numbers next to the reference project's fixed 0.40 threshold.

Usage: python bench/cedar_pipeline.py --cedar ../shared/datasets/cedar --size 150 --weights none
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_FILES = ("params.yaml", "dvc.yaml", "prefect.toml", "constraints.txt")
STAGES = ("download", "prepare", "embed", "train", "evaluate", "calibrate")


def scratch_workspace(root: Path, changes: dict[str, dict[str, object]]) -> Path:
    """A copy of the project's pipeline files under `root` with `changes` applied to params.yaml."""
    for name in WORKSPACE_FILES:
        shutil.copy2(PROJECT_ROOT / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for group, values in changes.items():
        params[group].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root / "params.yaml"


def run_stages(params_file: str) -> dict[str, float]:
    """Run the stage flows in order on `params_file` (as plain Python, as `dvc repro` does without a
    Prefect API); returns each stage's wall seconds."""
    import time
    from importlib import import_module

    sys.path.insert(0, str(PROJECT_ROOT))
    from flows._stage import call_stage

    timings = {}
    for stage in STAGES:
        started = time.perf_counter()
        call_stage(getattr(import_module(f"flows.{stage}"), f"{stage}_flow"), params_file)
        timings[stage] = round(time.perf_counter() - started, 1)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cedar", type=Path, default=PROJECT_ROOT.parent / "shared" / "datasets" / "cedar")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "bench" / "results" / "cedar_pipeline.json")
    arguments = parser.parse_args()

    from flows._stage import quiet_environment

    quiet_environment()

    changes = {
        "data": {"source": "local", "layout": "cedar", "path": str(arguments.cedar.resolve())},
        "prepare": {"image_size": arguments.size, "train_per_writer": 19},
        "model": {"weights": arguments.weights},
        "train": {"epochs": arguments.epochs, "augmented_views": arguments.views},
    }
    with tempfile.TemporaryDirectory() as scratch:
        timings = run_stages(str(scratch_workspace(Path(scratch), changes)))
        calibrate = json.loads((Path(scratch) / "metrics" / "calibrate_details.json").read_text())
        evaluate = json.loads((Path(scratch) / "metrics" / "evaluate_details.json").read_text())
    summary = {"settings": changes, "stage_seconds": timings, "evaluate": evaluate, "calibrate": calibrate}
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(summary, indent=2) + "\n")
    print_tables(evaluate, calibrate, timings)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def interval(calibrate: dict, figure: str) -> str:
    """A partition figure as "mean (low-high)" in percent."""
    summary = calibrate["partitions"][figure]
    return f"{percent(summary['mean'])} ({percent(summary['ci95'][0])}-{percent(summary['ci95'][1])})"


def print_tables(evaluate: dict, calibrate: dict, timings: dict[str, float]) -> None:
    """Markdown tables for bench/README.md: identification, a-posteriori EERs, the calibrated operating
    point on the prepare split and over the writer partitions (bench/quality.py compares models)."""
    print("| identification (test genuine) | value |\n|---|---|")
    for key in ("accuracy", "f1_weighted", "f1_macro", "top5_accuracy"):
        print(f"| {key} | {evaluate[key]:.3f} |")
    print("\n| verification, a posteriori | EER | AUC |\n|---|---|---|")
    for kind in ("skilled", "random"):
        auc = evaluate[f"auc_{kind}"]
        print(
            f"| {kind} | {percent(evaluate[f'eer_{kind}_a_posteriori'])} | {'n/a' if auc is None else f'{auc:.3f}'} |"
        )
    print(f"| skilled, per-writer thresholds | {percent(evaluate['eer_skilled_per_writer_a_posteriori'])} | |")
    print("\n| at the calibrated threshold, test | prepare's split | mean over partitions (95% interval) |")
    print("|---|---|---|")
    for figure in ("frr", "far_skilled", "far_random", "unenrolled_accepted"):
        print(f"| {figure} | {percent(calibrate[figure])} | {interval(calibrate, figure)} |")
    print(f"| confidence ECE, test genuine | {calibrate['expected_calibration_error']:.3f} | |")
    print("\nStage seconds: " + ", ".join(f"{name} {seconds}" for name, seconds in timings.items()))


if __name__ == "__main__":
    main()

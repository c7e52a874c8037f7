"""Stage `calibrate`: the answers' confidence (fitted on validation claims) and the "unknown" threshold
(fitted on validation genuine claims and the calibration writers' forgeries), reported on test.

Run it with `python -m flows.calibrate` (what `dvc repro calibrate` does) or `sigpipe calibrate`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

from flows._stage import pipeline_stage, run_entry_point, workspace_paths
from tasks.workspace.config import parse_group, read_params_file
from tasks.workspace.files import json_ready, write_json, write_metrics
from tasks.workspace.params_data import PrepareParams
from tasks.workspace.params_model import CalibrateParams, EvaluateParams, TrackingParams
from tasks.workspace.paths import ProjectPaths

# What `dvc metrics show` lists from metrics/calibrate.json: the calibrated operating point on test
# (FRR and skilled FAR; the table must fit a terminal, tests/unit/test_metrics_width.py). Every other
# number (random FAR, never-enrolled writers answered as enrolled ones, the confidence's ECE, each
# figure's mean and 95% interval over writer partitions) is in metrics/calibrate_details.json, in the
# stage's printout and in MLflow.
HEADLINE_METRICS = ("frr", "far_skilled")


@dataclass(frozen=True)
class CalibrateConfig:
    calibrate: CalibrateParams
    tracking: TrackingParams
    partitions: int  # evaluate.partitions: writer partitions the operating point is repeated on
    partition_seed: int  # evaluate.partition_seed
    calibration_fraction: float  # prepare.calibration_fraction: the calibration side's share of each partition


def calibrate_run_name(params: CalibrateParams, digest: str | None) -> str:
    """The calibration run's MLflow name: the threshold's objective and the data version training recorded."""
    from tasks.tracking.runs import data_label, run_name

    objective = "threshold at EER" if params.objective == "eer" else f"threshold at FAR {params.target_far:g}"
    return run_name("calibrate", objective, data_label(digest) if digest else "")


def shown(value: object) -> str:
    """A figure for the printout: three decimals, or n/a for a figure the data cannot give (null)."""
    return "n/a" if not isinstance(value, int | float) else f"{value:.3f}"


def operating_point_text(report: dict[str, object], partitions: int) -> str:
    """The calibrated operating point on test, with each figure's mean and 95% interval over partitions;
    a figure the dataset cannot give (no skilled forgeries, no unenrolled writer) reads n/a."""

    from tasks.evaluation.partitions import interval_of, partitions_used

    used = partitions_used(report, partitions)

    def figure(name: str) -> str:
        mean, low, high = interval_of(report, name)
        return f"{shown(report.get(name))} (over {used} partitions {shown(mean)}, {shown(low)}-{shown(high)})"

    return (
        f"threshold {shown(report.get('threshold'))}: test FRR {figure('frr')}, FAR skilled {figure('far_skilled')}, "
        f"FAR random {figure('far_random')}; never-enrolled signers answered as enrolled: "
        f"{shown(report.get('unenrolled_accepted'))}; confidence ECE {shown(report.get('expected_calibration_error'))}"
    )


def calibrate_task(paths: ProjectPaths, config: CalibrateConfig) -> dict[str, object]:
    """Fit on val genuine and the calibration split, report on test, write and log everything."""
    import mlflow

    from tasks.evaluation.calibrate import fit_calibration
    from tasks.evaluation.calibration_report import calibration_report
    from tasks.evaluation.plots import reliability_image
    from tasks.evaluation.scores import load_scores
    from tasks.tracking.runs import (
        ensure_experiment,
        loggable_metrics,
        parent_run_id,
        process_tags,
        recorded_data_version,
    )

    table = load_scores(paths.scores_file)
    classes = json.loads(paths.labels_file.read_text())["classes"]
    calibration = fit_calibration(table, config.calibrate.objective, config.calibrate.target_far)
    report = calibration_report(
        table,
        calibration,
        config.calibrate.reference_threshold,
        config.partitions,
        config.calibration_fraction,
        config.partition_seed,
    )
    # before json_ready turns its empty bins' NaN into None
    confidence = cast(Mapping[str, Any], report["confidence"])
    report = json_ready(report)
    write_metrics(paths.calibrate_metrics_file, paths.calibrate_details_file, report, HEADLINE_METRICS)
    write_json(paths.calibration_file, {**asdict(calibration), "unknown_class_id": len(classes), "classes": classes})
    reliability_image(confidence["reliability"], confidence["expected_calibration_error"], paths.reliability_file)
    experiment_id = ensure_experiment(paths, config.tracking.experiment)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=calibrate_run_name(config.calibrate, recorded_data_version(paths.train_run_file)),
        parent_run_id=parent_run_id(paths.train_run_file),
        tags=process_tags(),
    ):
        mlflow.set_tag("stage", "calibrate")
        mlflow.log_params({f"calibrate.{key}": value for key, value in config.calibrate.model_dump().items()})
        mlflow.log_metrics(loggable_metrics(report))
        mlflow.log_dict(report, "calibrate.json")
        mlflow.log_artifact(str(paths.reliability_file), artifact_path="plots")
        mlflow.log_artifact(str(paths.calibration_file))
    print(operating_point_text(report, config.partitions))
    return report


@pipeline_stage("calibrate")
def calibrate_flow(params_file: str) -> dict[str, object]:
    """Read the `calibrate` and `tracking` parameters and calibrate the classifier's scores."""
    paths = workspace_paths(params_file)
    params = read_params_file(paths.params_file)
    evaluate = parse_group(params, "evaluate", EvaluateParams, params_file)
    config = CalibrateConfig(
        calibrate=parse_group(params, "calibrate", CalibrateParams, params_file),
        tracking=parse_group(params, "tracking", TrackingParams, params_file),
        partitions=evaluate.partitions,
        partition_seed=evaluate.partition_seed,
        calibration_fraction=parse_group(params, "prepare", PrepareParams, params_file).calibration_fraction,
    )
    return calibrate_task(paths, config)


def main() -> None:
    """Entry point of `python -m flows.calibrate`."""
    run_entry_point(calibrate_flow)


if __name__ == "__main__":
    main()

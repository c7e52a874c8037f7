"""Stage `evaluate`: the field's metrics on the test split, as files and in MLflow.

Run it with `python -m flows.evaluate` (what `dvc repro evaluate` does) or `sigpipe evaluate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flows._stage import pipeline_stage, run_entry_point, workspace_paths
from tasks.workspace.config import parse_group, read_params_file
from tasks.workspace.files import json_ready, write_csv, write_metrics
from tasks.workspace.params_data import PrepareParams
from tasks.workspace.params_model import EvaluateParams, TrackingParams
from tasks.workspace.paths import ProjectPaths

PER_WRITER_COLUMNS = ("writer", "precision", "recall", "f1", "support")
# What `dvc metrics show` lists from metrics/evaluate.json (test identification accuracy and the
# skilled-forgery EER, labelled a posteriori: its threshold is chosen on the test scores); the table
# must fit a terminal beside calibrate.json's operating point. Every other number (weighted F1, the
# per-writer-threshold EER, the means and 95% intervals over writer partitions, the selection_* ones
# registration compares) is in metrics/evaluate_details.json.
HEADLINE_METRICS = ("accuracy", "eer_skilled_a_posteriori")


@dataclass(frozen=True)
class EvaluateConfig:
    evaluate: EvaluateParams
    tracking: TrackingParams
    calibration_fraction: float  # prepare's: the share of writers on the calibration side of each partition


def interval_text(metrics: dict[str, object], figure: str) -> str:
    """ "mean 0.110 (95% interval 0.095-0.125)" for a figure's partition summary in `metrics`."""
    from tasks.evaluation.partitions import interval_of

    mean, low, high = interval_of(metrics, figure)
    return f"mean {mean:.3f} (95% interval {low:.3f}-{high:.3f})"


def evaluate_task(paths: ProjectPaths, config: EvaluateConfig) -> dict[str, object]:
    """Score the val, test and calibration embeddings; write metrics, per-writer CSV and plots; log them."""
    import mlflow

    from tasks.data.manifest import read_manifest
    from tasks.evaluation.evaluate import evaluation_report, score_embeddings
    from tasks.evaluation.partitions import partitions_used
    from tasks.evaluation.plots import confusion_matrix_image, roc_det_image, score_distributions_image
    from tasks.evaluation.scores import save_scores, verification_scores
    from tasks.model.head import load_head
    from tasks.model.verifier import load_verifier
    from tasks.tracking.runs import (
        data_label,
        data_version,
        ensure_experiment,
        loggable_metrics,
        parent_run_id,
        process_tags,
        run_name,
    )
    from tasks.training.embedding_files import prepared_image_size

    classes = json.loads(paths.labels_file.read_text())["classes"]
    # The embed stage's float32 embeddings, scored with NumPy: `register` checks that the model it
    # packages (float32 whatever the training's policy) gives these scores, so the threshold and
    # confidence fitted on them are the served model's.
    rows = read_manifest(paths.manifest_file)
    table = score_embeddings(
        load_head(paths.head_file), load_verifier(paths.verifier_file), rows, paths.embeddings_dir, classes
    )
    save_scores(table, paths.scores_file)
    metrics, per_writer, matrix = evaluation_report(
        table,
        classes,
        config.evaluate.top_k,
        config.evaluate.partitions,
        config.calibration_fraction,
        config.evaluate.partition_seed,
    )
    write_metrics(paths.evaluate_metrics_file, paths.evaluate_details_file, metrics, HEADLINE_METRICS)
    write_csv(paths.per_writer_file, PER_WRITER_COLUMNS, per_writer)
    scores = verification_scores(table, "test")
    confusion_matrix_image(matrix, classes, paths.confusion_matrix_file)
    roc_det_image(scores, paths.roc_det_file)
    score_distributions_image(scores, paths.score_distributions_file)
    experiment_id = ensure_experiment(paths, config.tracking.experiment)
    digest = data_version(paths.manifest_file)
    image_size = prepared_image_size(rows, paths.root)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name("evaluate", f"{image_size} px", data_label(digest)),
        parent_run_id=parent_run_id(paths.train_run_file),
        tags=process_tags(),
    ):
        mlflow.set_tags({"stage": "evaluate", "data_version": digest})
        mlflow.log_metrics(loggable_metrics(metrics))
        mlflow.log_dict(json_ready(metrics), "evaluate.json")
        for plot in (paths.confusion_matrix_file, paths.roc_det_file, paths.score_distributions_file):
            mlflow.log_artifact(str(plot), artifact_path="plots")
        mlflow.log_artifact(str(paths.per_writer_file))
    used = partitions_used(metrics, config.evaluate.partitions)
    print(
        f"test: accuracy {metrics['accuracy']:.3f}, weighted F1 {metrics['f1_weighted']:.3f}, "
        f"top-{config.evaluate.top_k} {metrics[f'top{config.evaluate.top_k}_accuracy']:.3f}; "
        f"skilled-forgery EER (a posteriori) {metrics['eer_skilled_a_posteriori']:.3f}, over "
        f"{used} writer partitions {interval_text(metrics, 'eer_skilled_a_posteriori')}; "
        f"per-writer thresholds {metrics['eer_skilled_per_writer_a_posteriori']:.3f} "
        f"(softmax-probability baseline {metrics['softmax_eer_skilled_a_posteriori']:.3f})"
    )
    return metrics


@pipeline_stage("evaluate")
def evaluate_flow(params_file: str) -> dict[str, object]:
    """Read the `evaluate` and `tracking` parameters and evaluate the trained classifier."""
    paths = workspace_paths(params_file)
    params = read_params_file(paths.params_file)
    config = EvaluateConfig(
        evaluate=parse_group(params, "evaluate", EvaluateParams, params_file),
        tracking=parse_group(params, "tracking", TrackingParams, params_file),
        calibration_fraction=parse_group(params, "prepare", PrepareParams, params_file).calibration_fraction,
    )
    return evaluate_task(paths, config)


def main() -> None:
    """Entry point of `python -m flows.evaluate`."""
    run_entry_point(evaluate_flow)


if __name__ == "__main__":
    main()

"""Stage `train`: train the frozen-InceptionV3 classifier on `data/prepared/`, tracked in MLflow.

Run it with `python -m flows.train` (what `dvc repro train` does) or `sigpipe train`. A run that
was killed resumes from its last completed epoch, in the same MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import current_stage_run_name, run_entry_point, workspace_paths
from tasks.config import AugmentParams, ModelParams, TrackingParams, TrainParams, parse_group, read_params_file
from tasks.files import json_ready, write_json
from tasks.paths import ProjectPaths

MODEL_ARTIFACT_NAME = "model"


@dataclass(frozen=True)
class TrainConfig:
    """The parameter groups the train stage reads, and the whole file for logging."""

    model: ModelParams
    train: TrainParams
    augment: AugmentParams
    tracking: TrackingParams
    all_params: dict[str, Any]


def train_metrics(result: Any) -> dict[str, object]:
    """The content of `metrics/train.json` from a TrainResult."""
    history, best = result.state.history, result.state.best_epoch
    last = {name: values[-1] for name, values in history.items() if values}
    kept = {name: values[best] for name, values in history.items() if len(values) > best >= 0}
    return {
        "mode": result.mode,
        "epochs_run": result.state.completed_epochs,
        "best_epoch": best + 1,
        "stopped_early": result.state.stopped_early,
        "final": last,
        "best": kept,
    }


def run_circumstances(result: Any) -> dict[str, object]:
    """How this training ran (device, resume, feature reuse, wall times): recorded in
    `models/train_run.json` and MLflow, not in `metrics/train.json`, whose hash DVC records in
    dvc.lock and which must come out the same when the same inputs are trained again."""
    return {
        "device": result.device,
        "resumed_from_epoch": result.resumed_from_epoch,
        "features_reused": result.features_reused,
        "train_seconds": round(result.train_seconds, 3),
        "train_images_per_second": round(result.train_images_per_second, 3),
        "embed_seconds": round(result.embed_seconds, 3),
        "embed_images_per_second": round(result.embed_images_per_second, 3),
    }


def train_run_name(config: TrainConfig, image_size: int, digest: str) -> str:
    """The training run's MLflow name: head, mode (closed form for the ridge head), image size, data version."""
    from tasks.tracking import data_label, run_name

    how = "closed form" if config.model.head == "ridge" else config.train.mode
    return run_name("train", f"{config.model.head} head", how, f"{image_size} px", data_label(digest))


def classifier_signature(classifier: Any) -> Any:
    """The classifier's MLflow signature, read from its shapes and output dtype: a batch of RGB images
    (float32 pixels, 0-255) in, one score per writer out. The same signature `infer_signature` gives for
    a prediction, without that prediction, which would trace the whole InceptionV3 graph once more
    (about 2 s of every train stage)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    batch_input, batch_output = (-1, *classifier.input_shape[1:]), (-1, *classifier.output_shape[1:])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), batch_input)]),
        outputs=Schema([TensorSpec(np.dtype(classifier.output.dtype), batch_output)]),
    )


def log_classifier(classifier: Any) -> str:
    """Log the classifier to the active MLflow run with an explicit signature; returns its model URI."""
    import mlflow

    from tasks.tracking import model_artifacts_removed_on_failure, model_requirements

    with model_artifacts_removed_on_failure("classifier model"):
        return mlflow.tensorflow.log_model(
            classifier,
            name=MODEL_ARTIFACT_NAME,
            signature=classifier_signature(classifier),
            pip_requirements=model_requirements(),
        ).model_uri


@task(name="train-classifier", cache_policy=NO_CACHE)
def train_task(paths: ProjectPaths, config: TrainConfig) -> dict[str, object]:
    """Train while holding the checkpoint folder: a second training fails rather than train beside this one."""
    from tasks.checkpoint_lock import checkpoint_folder_lock

    with checkpoint_folder_lock(paths.train_checkpoint_dir):
        return train_holding_lock(paths, config)


def train_holding_lock(paths: ProjectPaths, config: TrainConfig) -> dict[str, object]:
    """Load the prepared data, train (resuming if a checkpoint matches), write and log the outputs."""
    import mlflow

    from tasks.checkpoints import read_resumable_state
    from tasks.device import apply_policy, choose_policy, visible_gpu_count
    from tasks.input_pipeline import load_training_data
    from tasks.manifest import read_manifest
    from tasks.model import save_model_file
    from tasks.plots import learning_curve
    from tasks.tracking import (
        data_version,
        end_abandoned_runs,
        ensure_experiment,
        epoch_logger,
        flatten_params,
        log_missing_epochs,
        loggable_metrics,
        process_tags,
    )
    from tasks.train import train_classifier, training_fingerprint
    from tasks.verifier import save_verifier

    digest = data_version(paths.manifest_file)
    fingerprint = training_fingerprint(config.model, config.train, config.augment, digest)
    pending = read_resumable_state(paths.train_checkpoint_dir, fingerprint)
    if pending is not None:
        print(f"resuming from epoch {pending.completed_epochs} of MLflow run {pending.run_id}")
    data = load_training_data(read_manifest(paths.manifest_file), paths.root)
    policy = choose_policy(visible_gpu_count(), config.train.mixed_precision, config.train.distribute)
    strategy = apply_policy(policy)
    print(
        f"{len(data.classes)} writers, {len(data.train)} train / {len(data.val)} val images "
        f"at {data.image_size} px; mode {config.train.mode}; {policy}"
    )
    if config.model.head == "ridge":
        print(
            "model.head is ridge: the head is solved in closed form from the cached views, so train.mode, "
            "epochs, learning_rate, batch_size and patience do not apply (they do for head: linear or mlp)"
        )
    experiment_id = ensure_experiment(paths, config.tracking.experiment)
    end_abandoned_runs(experiment_id)  # a killed run, resumed or not, must not stay RUNNING
    run_id = pending.run_id if pending is not None else None
    # The tags name this process as the run's owner from the first instant, resumed or new.
    with mlflow.start_run(
        run_id=run_id,
        experiment_id=experiment_id,
        run_name=None if run_id else train_run_name(config, data.image_size, digest),
        tags=process_tags(),
    ) as run:
        if pending is not None:
            missing = log_missing_epochs(run.info.run_id, pending.history)
            if missing:
                print(f"logged the metrics of epochs {missing} from the checkpoint: the cut run had not logged them")
        if run_id is None:
            mlflow.log_params(flatten_params(config.all_params))
            mlflow.set_tags(
                {
                    "stage": "train",
                    "mode": config.train.mode,
                    "device": policy.device,
                    "strategy": policy.strategy,
                    "mixed_precision": str(policy.mixed_precision),
                    "data_version": digest,
                }
            )
        with strategy.scope():
            result = train_classifier(
                paths,
                data,
                config.model,
                config.train,
                config.augment,
                fingerprint,
                policy.device,
                run_id=run.info.run_id,
                callbacks=[epoch_logger()],
            )
        if config.model.head == "ridge":  # solved in closed form: its one "epoch" was not logged by a callback
            mlflow.log_metrics({name: values[0] for name, values in result.state.history.items()}, step=0)
        paths.models_dir.mkdir(parents=True, exist_ok=True)
        save_model_file(result.classifier, paths.classifier_file)  # byte-reproducible: DVC hashes it
        save_verifier(result.verifier, paths.verifier_file)
        write_json(paths.labels_file, {"classes": list(result.classes), "unknown_class_id": len(result.classes)})
        learning_curve(result.state.history, result.state.best_epoch, paths.learning_curve_file)
        metrics, circumstances = train_metrics(result), run_circumstances(result)
        write_json(paths.train_metrics_file, metrics)
        mlflow.log_metrics(loggable_metrics({**metrics, **circumstances}))
        mlflow.log_dict(json_ready(metrics), "train.json")
        mlflow.log_artifact(str(paths.learning_curve_file), artifact_path="plots")
        mlflow.log_artifact(str(paths.labels_file))
        mlflow.log_artifact(str(paths.verifier_file))
        model_uri = log_classifier(result.classifier) if config.tracking.log_model else None
        write_json(
            paths.train_run_file,
            {
                "run_id": run.info.run_id,
                "experiment_id": experiment_id,
                "model_uri": model_uri,
                "data_version": digest,
                **circumstances,
            },
        )
    best = cast(dict[str, float], metrics["best"])  # train_metrics: each metric's value at the best epoch
    print(
        f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}: "
        f"val_accuracy {best.get('val_accuracy', float('nan')):.3f}; MLflow run {run.info.run_id}"
    )
    return metrics


@flow(name="train", flow_run_name=current_stage_run_name, log_prints=True)
def train_flow(params_file: str) -> dict[str, object]:
    """Read the `model`, `augment`, `train` and `tracking` parameters and train the classifier."""
    paths = workspace_paths(params_file)
    params = read_params_file(paths.params_file)
    config = TrainConfig(
        model=parse_group(params, "model", ModelParams, params_file),
        train=parse_group(params, "train", TrainParams, params_file),
        augment=parse_group(params, "augment", AugmentParams, params_file),
        tracking=parse_group(params, "tracking", TrackingParams, params_file),
        all_params=params,
    )
    return train_task(paths, config)


def main() -> None:
    """Entry point of `python -m flows.train`."""
    run_entry_point(train_flow)


if __name__ == "__main__":
    main()

"""Stage `train`: fit the verifier and the head on the embed stage's `data/embeddings/`, tracked in MLflow.

Run it with `python -m flows.train` (what `dvc repro train` does) or `sigpipe train`. The default ridge
head is solved in closed form with NumPy (no TensorFlow); a Keras head (`linear`, `mlp`) that was
killed resumes from its last completed epoch, in the same MLflow run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from flows._stage import pipeline_stage, run_entry_point, workspace_paths
from tasks.workspace.config import parse_group, read_params_file
from tasks.workspace.files import json_ready, write_json
from tasks.workspace.params_model import AugmentParams, ModelParams, TrackingParams, TrainParams
from tasks.workspace.paths import ProjectPaths

CLOSED_FORM_DEVICE = "cpu"  # the ridge head is solved with NumPy


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


def run_circumstances(result: Any, embed_run: dict[str, object]) -> dict[str, object]:
    """How this training ran (device, resume, wall times, and the embed stage's): recorded in
    `models/train_run.json` and MLflow, not in `metrics/train.json`, whose hash DVC records in
    dvc.lock and which must come out the same when the same inputs are trained again."""
    return {
        **embed_run,
        "device": result.device,
        "resumed_from_epoch": result.resumed_from_epoch,
        "train_seconds": round(result.train_seconds, 3),
        "train_images_per_second": round(result.train_images_per_second, 3),
    }


def train_run_name(config: TrainConfig, image_size: int, digest: str) -> str:
    """The training run's MLflow name: head, mode (closed form for the ridge head), image size, data version."""
    from tasks.tracking.runs import data_label, run_name

    how = "closed form" if config.model.head == "ridge" else config.train.mode
    return run_name("train", f"{config.model.head} head", how, f"{image_size} px", data_label(digest))


def train_task(paths: ProjectPaths, config: TrainConfig) -> dict[str, object]:
    """Train while holding the checkpoint folder: a second training fails rather than train beside this one."""
    from tasks.training.checkpoint_lock import checkpoint_folder_lock

    with checkpoint_folder_lock(paths.train_checkpoint_dir):
        return train_holding_lock(paths, config)


def train_holding_lock(paths: ProjectPaths, config: TrainConfig) -> dict[str, object]:
    """Read the embeddings, fit the verifier and the head (resuming a Keras head if a checkpoint
    matches), write and log the outputs."""
    import mlflow

    from tasks.data.manifest import read_manifest
    from tasks.evaluation.plots import learning_curve
    from tasks.model.head import save_head
    from tasks.model.verifier import save_verifier
    from tasks.model.verifier_cache import remember_verifier
    from tasks.tracking.epochs import log_missing_epochs
    from tasks.tracking.runs import (
        data_version,
        end_abandoned_runs,
        ensure_experiment,
        flatten_params,
        loggable_metrics,
        process_tags,
    )
    from tasks.training.checkpoint_state import read_resumable_state
    from tasks.training.train import RIDGE_HEAD, load_embedded_training, training_fingerprint, verifier_problem_digest

    digest = data_version(paths.manifest_file)
    fingerprint = training_fingerprint(config.model, config.train, config.augment, digest)
    pending = read_resumable_state(paths.train_checkpoint_dir, fingerprint)
    if pending is not None:
        print(f"resuming from epoch {pending.completed_epochs} of MLflow run {pending.run_id}")
    data = load_embedded_training(paths, read_manifest(paths.manifest_file))
    ridge = config.model.head == RIDGE_HEAD
    policy, strategy = keras_policy(config.train) if not ridge else (None, None)
    device = policy.device if policy is not None else CLOSED_FORM_DEVICE
    print(
        f"{len(data.classes)} writers, {len(data.train_rows)} train ({data.train_views.shape[0]} views) / "
        f"{len(data.val_rows)} val images at {data.image_size} px; head {config.model.head}"
        + (f", mode {config.train.mode}; {policy}" if policy is not None else "")
    )
    if ridge:
        print(
            "model.head is ridge: the head is solved in closed form from the stored views, so train.mode, "
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
                    "device": device,
                    "strategy": policy.strategy if policy is not None else "none",
                    "mixed_precision": str(policy.mixed_precision) if policy is not None else "False",
                    "data_version": digest,
                }
            )
        result = fit_head(paths, config, data, fingerprint, device, run.info.run_id, strategy)
        if ridge:  # solved in closed form: its one "epoch" was not logged by a callback
            mlflow.log_metrics({name: values[0] for name, values in result.state.history.items()}, step=0)
        paths.models_dir.mkdir(parents=True, exist_ok=True)
        save_head(result.head, paths.head_file)  # byte-reproducible: DVC hashes it
        save_verifier(result.verifier, paths.verifier_file)
        remember_verifier(paths.verifier_cache_file, verifier_problem_digest(data, config.model), result.verifier)
        write_json(paths.labels_file, {"classes": list(result.classes), "unknown_class_id": len(result.classes)})
        learning_curve(result.state.history, result.state.best_epoch, paths.learning_curve_file)
        embed_run = read_json_file(paths.embed_run_file)
        metrics, circumstances = train_metrics(result), run_circumstances(result, embed_run)
        write_json(paths.train_metrics_file, metrics)
        mlflow.log_metrics(loggable_metrics({**metrics, **circumstances}))
        mlflow.log_dict(json_ready(metrics), "train.json")
        mlflow.log_artifact(str(paths.learning_curve_file), artifact_path="plots")
        for produced in (paths.labels_file, paths.verifier_file, paths.head_file):
            mlflow.log_artifact(str(produced))
        write_json(
            paths.train_run_file,
            {"run_id": run.info.run_id, "experiment_id": experiment_id, "data_version": digest, **circumstances},
        )
    best = cast(dict[str, float], metrics["best"])  # train_metrics: each metric's value at the best epoch
    print(
        f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}: "
        f"val_accuracy {best.get('val_accuracy', float('nan')):.3f}; MLflow run {run.info.run_id}"
    )
    return metrics


def read_json_file(path: Path) -> dict[str, object]:
    """A JSON object from `path`, or {} when the file is absent or unreadable (run circumstances only)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def keras_policy(train: TrainParams) -> tuple[Any, Any]:
    """The device policy and distribution strategy of a Keras head (TensorFlow imported here only)."""
    from tasks.training.device import apply_policy, choose_policy, visible_gpu_count

    policy = choose_policy(visible_gpu_count(), train.mixed_precision, train.distribute)
    return policy, apply_policy(policy)


def fit_head(
    paths: ProjectPaths, config: TrainConfig, data: Any, fingerprint: str, device: str, run_id: str, strategy: Any
) -> Any:
    """`tasks.training.train.train_classifier`; a Keras head inside its strategy's scope, its epochs logged to
    MLflow."""
    from tasks.training.train import train_classifier

    if strategy is None:  # the closed-form ridge head: NumPy only
        return train_classifier(paths, data, config.model, config.train, config.augment, fingerprint, device, run_id)
    from tasks.tracking.epochs import epoch_logger

    with strategy.scope():
        return train_classifier(
            paths,
            data,
            config.model,
            config.train,
            config.augment,
            fingerprint,
            device,
            run_id=run_id,
            callbacks=[epoch_logger()],
        )


@pipeline_stage("train")
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

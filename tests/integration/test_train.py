"""Training on a generated dataset: both modes learn, the cache is reused and invalidated, an
interrupted run resumes to the same result, and the train flow logs a loadable MLflow run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from tasks.config import AugmentParams, ModelParams, TrainParams
from tasks.paths import ProjectPaths
from tasks.prepare import prepare_dataset, read_manifest
from tasks.synthetic import write_synthetic_dataset
from tasks.train import (
    STATE_FILE,
    TrainResult,
    load_training_data,
    plain_batches,
    train_classifier,
    training_fingerprint,
)
from tests.conftest import PROJECT_ROOT, edit_params, prepare_params, synthetic_params

WRITERS = 4
CHANCE = 1 / WRITERS
MODEL = ModelParams(weights="none", dense_units=64, dropout=0.1, standardize_features=True)
AUGMENT = AugmentParams.model_validate(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["augment"])
TRAIN = TrainParams(
    mode="cached",
    epochs=6,
    batch_size=8,
    learning_rate=0.001,
    patience=10,
    seed=5,
    augmented_views=2,
    embed_batch_size=16,
    mixed_precision="off",
    jit_compile=False,
    distribute="none",
)


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared generated dataset at 75 px: 4 writers, 7 train / 3 val / 5 test genuine each."""
    paths = ProjectPaths.from_root(tmp_path_factory.mktemp("prepared"))
    params = synthetic_params(
        writers=WRITERS,
        genuine_per_writer=15,
        skilled_per_writer=1,
        simple_per_writer=0,
        opposite_per_writer=0,
        width=160,
        height=96,
    )
    write_synthetic_dataset(params, paths.raw_dir)
    prepare_dataset(paths, "utsig", prepare_params(image_size=75, val_fraction=0.3), show_progress=False)
    return paths.root


@pytest.fixture
def paths(prepared_root: Path, tmp_path: Path) -> ProjectPaths:
    """A fresh workspace holding a copy of the prepared data (so each test has its own caches)."""
    shutil.copytree(prepared_root / "data" / "prepared", tmp_path / "data" / "prepared")
    return ProjectPaths.from_root(tmp_path)


def train(
    paths: ProjectPaths, train_params: TrainParams = TRAIN, augment: AugmentParams = AUGMENT, callbacks: tuple = ()
) -> TrainResult:
    data = load_training_data(read_manifest(paths.manifest_file), paths.root)
    fingerprint = training_fingerprint(MODEL, train_params, augment, "data")
    return train_classifier(
        paths, data, MODEL, train_params, augment, fingerprint, "cpu", callbacks=callbacks, show_progress=False
    )


def test_cached_mode_learns_reuses_its_cache_and_invalidates_it(paths: ProjectPaths) -> None:
    first = train(paths)
    history = first.state.history
    assert history["loss"][-1] < history["loss"][0]
    assert max(history["val_accuracy"]) > CHANCE + 0.2
    assert not first.features_reused and first.embed_images_per_second > 0
    assert len(list(paths.features_dir.glob("*.npz"))) == 1

    second = train(paths)
    assert second.features_reused
    assert second.state.history == history  # reproducible on CPU, to the last digit

    rotated = train(paths, augment=AUGMENT.model_copy(update={"rotation_degrees": 10.0}))
    assert not rotated.features_reused
    assert len(list(paths.features_dir.glob("*.npz"))) == 1  # stale keys are removed


def test_the_full_classifier_equals_the_head_trained_on_the_cache(paths: ProjectPaths) -> None:
    result = train(paths)
    data = load_training_data(read_manifest(paths.manifest_file), paths.root)
    probabilities = result.classifier.predict(plain_batches(data.test, None, 16), verbose=0)
    assert float(np.mean(np.argmax(probabilities, axis=1) == data.test.labels)) == pytest.approx(result.test_accuracy)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_online_mode_learns(paths: ProjectPaths) -> None:
    result = train(paths, TRAIN.model_copy(update={"mode": "online", "epochs": 5}))
    history = result.state.history
    assert len(history["loss"]) == 5
    assert history["loss"][-1] < history["loss"][0]
    assert max(history["val_accuracy"]) > CHANCE
    assert result.classifier.output_shape == (None, WRITERS)


class Crash(keras.callbacks.Callback):
    """Stands for a killed process: fails right after epoch `after` was checkpointed."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.after:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize(("mode", "epochs", "crash_after"), [("cached", 4, 2), ("online", 3, 1)])
def test_interrupted_run_resumes_from_its_last_epoch_to_the_same_result(
    paths: ProjectPaths, mode: str, epochs: int, crash_after: int
) -> None:
    params = TRAIN.model_copy(update={"mode": mode, "epochs": epochs})
    uninterrupted = train(paths, params)
    assert not paths.train_checkpoint_dir.exists()

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(paths, params, callbacks=(Crash(after=crash_after),))
    state = json.loads((paths.train_checkpoint_dir / STATE_FILE).read_text())
    assert state["completed_epochs"] == crash_after

    resumed = train(paths, params)
    assert resumed.resumed_from_epoch == crash_after
    assert resumed.state.completed_epochs == epochs
    for name, values in uninterrupted.state.history.items():
        assert np.allclose(resumed.state.history[name], values, rtol=1e-4), name
    assert not paths.train_checkpoint_dir.exists()


def test_stage_flows_train_evaluate_calibrate_and_log_to_mlflow(workspace: Path, prefect_api_url: str) -> None:
    import mlflow

    from flows.download import download_flow
    from flows.prepare import prepare_flow
    from flows.train import train_flow

    edit_params(
        workspace / "params.yaml",
        {
            "synthetic": {
                "writers": 3,
                "genuine_per_writer": 10,
                "skilled_per_writer": 2,
                "simple_per_writer": 0,
                "opposite_per_writer": 2,
                "width": 120,
                "height": 80,
            },
            "prepare": {"image_size": 75, "workers": 1},
            "model": {"dense_units": 32},
            "train": {"epochs": 3, "augmented_views": 1, "patience": 5},
            "calibrate": {"target_far": 0.2},  # 6 calibration unknowns can resolve a FAR of 0.2, not 0.05
        },
    )
    params_file = str(workspace / "params.yaml")
    download_flow(params_file)
    prepare_flow(params_file)
    metrics = train_flow(params_file)

    paths = ProjectPaths.from_root(workspace)
    assert json.loads(paths.train_metrics_file.read_text()) == json.loads(json.dumps(metrics))
    assert paths.learning_curve_file.stat().st_size > 0
    assert json.loads(paths.labels_file.read_text()) == {"classes": ["001", "002", "003"], "unknown_class_id": 3}
    reloaded = keras.models.load_model(paths.classifier_file)
    assert reloaded.output_shape == (None, 3)

    run_info = json.loads(paths.train_run_file.read_text())
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri)
    run = mlflow.get_run(run_info["run_id"])
    assert run.data.params["train.epochs"] == "3" and run.data.params["prepare.image_size"] == "75"
    assert run.data.tags["mode"] == "cached" and run.data.tags["device"] == "cpu"
    assert run.data.tags["data_version"] == run_info["data_version"]
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [point.step for point in history] == list(range(metrics["epochs_run"]))
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"plots", "labels.json"} <= artifacts
    model = mlflow.pyfunc.load_model(run_info["model_uri"])
    batch = np.full((2, 75, 75, 3), 255.0, dtype=np.float32)
    predictions = np.asarray(model.predict(batch))
    assert predictions.shape == (2, 3)
    assert np.allclose(predictions.sum(axis=1), 1.0, atol=1e-5)

    check_evaluate_and_calibrate(workspace, run_info["run_id"])


def check_evaluate_and_calibrate(workspace: Path, train_run_id: str) -> None:
    """The evaluate and calibrate flows on the trained workspace: files, keys, nested MLflow runs."""
    import mlflow

    from flows.calibrate import calibrate_flow
    from flows.evaluate import evaluate_flow

    params_file = str(workspace / "params.yaml")
    paths = ProjectPaths.from_root(workspace)
    evaluation = evaluate_flow(params_file)
    written = json.loads(paths.evaluate_metrics_file.read_text())
    for key in ("accuracy", "f1_weighted", "f1_macro", "top5_accuracy", "eer_skilled", "auc_skilled"):
        assert key in written, key
    assert 0.0 <= written["accuracy"] <= 1.0 and written["test_genuine_images"] == 15
    assert written["eer_simple"] is None  # no simple forgeries in this dataset: null, not a made-up number
    assert written["verification_a_posteriori"]["threshold_source"] == "test scores (a posteriori)"
    assert len(read_manifest(paths.per_writer_file)) == 3
    for plot in (paths.confusion_matrix_file, paths.roc_det_file, paths.score_distributions_file):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert evaluation["accuracy"] == written["accuracy"]

    calibrate_flow(params_file)
    report = json.loads(paths.calibrate_metrics_file.read_text())
    for key in (
        "temperature",
        "threshold",
        "frr",
        "far_skilled",
        "far_opposite",
        "far_random",
        "expected_calibration_error_before",
        "expected_calibration_error_after",
    ):
        assert key in report, key
    assert report["temperature"] > 0 and 0 < report["threshold"] <= 1
    calibration = json.loads(paths.calibration_file.read_text())
    assert calibration["unknown_class_id"] == 3 and calibration["threshold"] == report["threshold"]
    assert paths.reliability_file.stat().st_size > 0

    client = mlflow.tracking.MlflowClient()
    children = client.search_runs(
        [client.get_run(train_run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{train_run_id}'"
    )
    stages = {run.data.tags["stage"]: run for run in children}
    assert set(stages) == {"evaluate", "calibrate"}
    assert stages["evaluate"].data.metrics["accuracy"] == pytest.approx(written["accuracy"])
    assert stages["calibrate"].data.metrics["threshold"] == pytest.approx(report["threshold"])

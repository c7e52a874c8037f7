"""Training on a generated dataset: both modes learn, the cache is reused and invalidated, an
interrupted run resumes to the same result, and the train flow logs a loadable MLflow run."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from tasks.checkpoints import best_file_name, read_resumable_state
from tasks.config import AugmentParams, ModelParams, TrainParams
from tasks.input_pipeline import SplitImages, load_split_images, load_training_data, plain_batches
from tasks.manifest import read_manifest
from tasks.paths import ProjectPaths
from tasks.prepare import prepare_dataset
from tasks.synthetic import write_synthetic_dataset
from tasks.train import TrainResult, train_classifier, training_fingerprint
from tests.conftest import PROJECT_ROOT, prepare_params, synthetic_params

WRITERS = 4
CHANCE = 1 / WRITERS
MODEL = ModelParams(
    weights="none", head="mlp", dense_units=64, dropout=0.1, standardize_features=True, verifier_regularization=0.01
)
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


@pytest.fixture(scope="module")
def default_training(prepared_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ProjectPaths, TrainResult]:
    """One training with the module's defaults (cached mode, MLP head) in its own workspace, shared by the
    tests that only read what it produced (its result, its embedding cache): each would otherwise embed
    every image again for the same result. A test that trains again there works on a copy."""
    root = tmp_path_factory.mktemp("default-training")
    shutil.copytree(prepared_root / "data" / "prepared", root / "data" / "prepared")
    paths = ProjectPaths.from_root(root)
    return paths, train(paths)


def train(
    paths: ProjectPaths,
    train_params: TrainParams = TRAIN,
    augment: AugmentParams = AUGMENT,
    callbacks: tuple = (),
    model: ModelParams = MODEL,
) -> TrainResult:
    data = load_training_data(read_manifest(paths.manifest_file), paths.root)
    fingerprint = training_fingerprint(model, train_params, augment, "data")
    return train_classifier(
        paths, data, model, train_params, augment, fingerprint, "cpu", callbacks=callbacks, show_progress=False
    )


def held_out_images(paths: ProjectPaths, result: TrainResult) -> SplitImages:
    """The test genuine images, which training never loads, for checking what it produced."""
    return load_split_images(read_manifest(paths.manifest_file), paths.root, result.classes, "test")


def test_the_ridge_head_is_the_verifier_and_identifies_the_test_writers(paths: ProjectPaths) -> None:
    """The default head: no epochs, the classifier's logits are the verifier's scores, and it beats chance
    by far on held-out images; the verifier ranks each test image's own writer above the others."""
    from tasks.model import LogitScorer

    result = train(paths, model=MODEL.model_copy(update={"head": "ridge"}))
    test = held_out_images(paths, result)
    outputs = LogitScorer(result.classifier).outputs(plain_batches(test, None, 16))
    np.testing.assert_allclose(outputs.logits, result.verifier.scores(outputs.embeddings), rtol=1e-4, atol=1e-4)
    assert result.state.completed_epochs == 1 and result.state.history["val_accuracy"][0] > CHANCE + 0.3
    assert float(np.mean(np.argmax(outputs.logits, axis=1) == test.labels)) > CHANCE + 0.3


def test_the_cache_holds_the_clean_view_first_and_the_head_trains_on_every_view(
    default_training: tuple[ProjectPaths, TrainResult],
) -> None:
    from tasks.features import read_feature_cache
    from tasks.model import build_embedder

    paths, result = default_training
    cache_file = next(paths.features_dir.glob("*.npz"))
    cache = read_feature_cache(paths.features_dir, cache_file.stem)
    assert cache.train_views.shape[0] == 1 + TRAIN.augmented_views
    data = load_training_data(read_manifest(paths.manifest_file), paths.root)
    embedder = build_embedder(result.classifier.get_layer("inception_v3"), data.image_size)
    clean = embedder.predict(plain_batches(data.train, None, 16), verbose=0)
    np.testing.assert_allclose(cache.train_views[0], clean, rtol=1e-3, atol=1e-4)
    assert not np.allclose(cache.train_views[1], clean, rtol=1e-3, atol=1e-4)
    assert result.train_images_per_second > 0


def test_cached_mode_learns_reuses_its_cache_and_invalidates_it(
    default_training: tuple[ProjectPaths, TrainResult], tmp_path: Path
) -> None:
    trained_paths, first = default_training
    history = first.state.history
    assert history["loss"][-1] < history["loss"][0]
    assert max(history["val_accuracy"]) > CHANCE + 0.2
    assert not first.features_reused and first.embed_images_per_second > 0
    assert len(list(trained_paths.features_dir.glob("*.npz"))) == 1

    # Trained again on a copy of that workspace (its prepared data and embedding cache).
    shutil.copytree(trained_paths.root / "data", tmp_path / "data")
    paths = ProjectPaths.from_root(tmp_path)
    second = train(paths)
    assert second.features_reused
    assert second.state.history == history  # reproducible on CPU, to the last digit

    rotated = train(paths, augment=AUGMENT.model_copy(update={"rotation_degrees": 10.0}))
    assert not rotated.features_reused
    assert len(list(paths.features_dir.glob("*.npz"))) == 1  # stale keys are removed


def test_the_full_classifier_equals_the_head_trained_on_the_cache(
    default_training: tuple[ProjectPaths, TrainResult],
) -> None:
    """The classifier that is saved (base + head) gives the validation accuracy the head reached on
    the cached embeddings at its best epoch, and well above chance on test images."""
    paths, result = default_training
    data = load_training_data(read_manifest(paths.manifest_file), paths.root)
    validation = result.classifier.predict(plain_batches(data.val, None, 16), verbose=0)
    best = result.state.history["val_accuracy"][result.state.best_epoch]
    assert float(np.mean(np.argmax(validation, axis=1) == data.val.labels)) == pytest.approx(best)
    assert np.allclose(validation.sum(axis=1), 1.0, atol=1e-5)
    test = held_out_images(paths, result)
    probabilities = result.classifier.predict(plain_batches(test, None, 16), verbose=0)
    assert float(np.mean(np.argmax(probabilities, axis=1) == test.labels)) > CHANCE + 0.2


def test_online_mode_learns(paths: ProjectPaths) -> None:
    result = train(paths, TRAIN.model_copy(update={"mode": "online", "epochs": 5}))
    history = result.state.history
    assert len(history["loss"]) == 5
    assert history["loss"][-1] < history["loss"][0]
    assert max(history["val_accuracy"]) > CHANCE
    assert result.classifier.output_shape == (None, WRITERS)
    assert not result.classifier.compiled  # what gets saved carries no optimizer state


def test_cached_mode_learns_under_bfloat16_mixed_precision(paths: ProjectPaths) -> None:
    """`train.mixed_precision: on` on a CPU: bfloat16 embeddings and head, float32 probabilities."""
    from tasks.device import apply_policy, choose_policy

    params = TRAIN.model_copy(update={"mixed_precision": "on"})
    try:
        apply_policy(choose_policy(0, params.mixed_precision, params.distribute))
        result = train(paths, params)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    history = result.state.history
    assert result.classifier.get_layer("head_dense").compute_dtype == "bfloat16"
    assert history["loss"][-1] < history["loss"][0]
    assert max(history["val_accuracy"]) > CHANCE + 0.2
    probabilities = result.classifier.predict(plain_batches(held_out_images(paths, result), None, 16), verbose=0)
    assert probabilities.dtype == np.float32


class Crash(keras.callbacks.Callback):
    """Stands for a killed process: fails right after epoch `after` was checkpointed."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.after:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "epochs", "crash_after"), [("cached", 4, 2), ("online", 2, 1)])
def test_interrupted_run_resumes_from_its_last_epoch_to_the_same_result(
    paths: ProjectPaths, mode: str, epochs: int, crash_after: int
) -> None:
    params = TRAIN.model_copy(update={"mode": mode, "epochs": epochs})
    uninterrupted = train(paths, params)
    assert not paths.train_checkpoint_dir.exists()

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(paths, params, callbacks=(Crash(after=crash_after),))
    state = read_resumable_state(paths.train_checkpoint_dir, training_fingerprint(MODEL, params, AUGMENT, "data"))
    assert state is not None and state.completed_epochs == crash_after
    best_files = sorted(path.name for path in paths.train_checkpoint_dir.glob("best-*"))
    assert best_files == [best_file_name(state.best_epoch)]  # the state names the one best file there is

    resumed = train(paths, params)
    assert resumed.resumed_from_epoch == crash_after
    assert resumed.state.completed_epochs == epochs
    for name, values in uninterrupted.state.history.items():
        assert np.allclose(resumed.state.history[name], values, rtol=1e-4), name
    assert not paths.train_checkpoint_dir.exists()


def test_a_failed_checkpoint_write_stops_training_with_its_error(
    paths: ProjectPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.checkpoints

    def disk_full(arrays: dict, path: Path) -> None:
        raise OSError(f"{path}: no space left on device")

    monkeypatch.setattr(tasks.checkpoints, "save_arrays", disk_full)
    with pytest.raises(OSError, match="no space left"):
        train(paths, TRAIN.model_copy(update={"epochs": 3}))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"not a zip at all"])
def test_an_unreadable_checkpoint_is_ignored_not_fatal(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "last.npz").write_bytes(content)
    assert read_resumable_state(tmp_path, "any fingerprint") is None

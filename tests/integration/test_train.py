"""Training on a generated dataset's embeddings: the ridge head without TensorFlow, both Keras modes learn,
the packaged classifier equals the trained head, and an interrupted run resumes to the same result."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from tasks.data.manifest import read_manifest
from tasks.data.prepare import prepare_dataset
from tasks.data.synthetic import write_synthetic_dataset
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.training.checkpoints import best_file_name, read_resumable_state
from tasks.training.input_pipeline import load_training_data, plain_batches
from tasks.training.train import TrainResult, load_embedded_training, train_classifier, training_fingerprint
from tasks.workspace.params_model import AugmentParams, ModelParams, TrainParams
from tasks.workspace.paths import ProjectPaths
from tests.conftest import PROJECT_ROOT, prepare_params, synthetic_params

WRITERS = 4
IMAGE_SIZE = 75
CHANCE = 1 / WRITERS
MODEL = ModelParams(
    weights="none",
    ink="bright",
    pooled_layers=["mixed2", "mixed10"],
    head="mlp",
    dense_units=64,
    dropout=0.1,
    standardize_features=True,
    verifier_regularization=0.01,
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


def embed_workspace(paths: ProjectPaths, augment: AugmentParams = AUGMENT, views: int = TRAIN.augmented_views) -> None:
    """What the embed stage does: every split's images through the base (seeded as training reinitialises
    it), the training images also in `views` augmented copies, one file per split."""
    from tasks.model.classifier import build_base
    from tasks.training.embed import embed_manifest, feature_embedder
    from tasks.training.embedding_files import embedding_file, save_embedded_rows

    base = build_base(IMAGE_SIZE, MODEL.weights, paths.root, TRAIN.seed)
    rows = read_manifest(paths.manifest_file)
    run = embed_manifest(
        feature_embedder(base, IMAGE_SIZE, EmbeddingSpec.of(MODEL)),
        rows,
        paths.root,
        augment,
        views,
        TRAIN.seed,
        16,
        False,
    )
    for split, embedded in run.splits.items():
        save_embedded_rows(embedded, embedding_file(paths.embeddings_dir, split))


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared and embedded generated dataset at 75 px: 4 writers, 7 train / 3 val / 5 test genuine each."""
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
    prepare_dataset(paths, "utsig", prepare_params(image_size=IMAGE_SIZE, val_fraction=0.3), show_progress=False)
    embed_workspace(paths)
    return paths.root


@pytest.fixture
def paths(prepared_root: Path, tmp_path: Path) -> ProjectPaths:
    """A fresh workspace holding a copy of the prepared data and its embeddings."""
    shutil.copytree(prepared_root / "data", tmp_path / "data")
    return ProjectPaths.from_root(tmp_path)


@pytest.fixture(scope="module")
def default_training(prepared_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ProjectPaths, TrainResult]:
    """One training with the module's defaults (cached mode, MLP head) in its own workspace, shared by the
    tests that only read what it produced."""
    root = tmp_path_factory.mktemp("default-training")
    shutil.copytree(prepared_root / "data", root / "data")
    paths = ProjectPaths.from_root(root)
    return paths, train(paths)


def train(
    paths: ProjectPaths,
    train_params: TrainParams = TRAIN,
    augment: AugmentParams = AUGMENT,
    callbacks: tuple = (),
    model: ModelParams = MODEL,
) -> TrainResult:
    data = load_embedded_training(paths, read_manifest(paths.manifest_file))
    fingerprint = training_fingerprint(model, train_params, augment, "data")
    return train_classifier(
        paths, data, model, train_params, augment, fingerprint, "cpu", callbacks=callbacks, show_progress=False
    )


def held_out(paths: ProjectPaths, result: TrainResult) -> tuple[np.ndarray, np.ndarray]:
    """The test genuine images' embeddings and labels, which training never reads, for checking what it produced."""
    from tasks.training.embedding_files import load_split_embeddings

    index = {writer: position for position, writer in enumerate(result.classes)}
    rows = [row for row in read_manifest(paths.manifest_file) if row["split"] == "test" and row["kind"] == "genuine"]
    embedded = load_split_embeddings(paths.embeddings_dir, "test", rows)
    return embedded.clean, np.array([index[row["writer"]] for row in rows])


def packaged(result: TrainResult, paths: ProjectPaths) -> keras.Model:
    """The classifier register would package: the module's base and the trained head's arrays."""
    from tasks.model.classifier import build_base, classifier_with_head

    base = build_base(IMAGE_SIZE, MODEL.weights, paths.root, TRAIN.seed)
    return classifier_with_head(base, IMAGE_SIZE, result.head, MODEL.dropout, TRAIN.seed, EmbeddingSpec.of(MODEL))


def test_the_ridge_head_is_the_verifier_and_identifies_the_test_writers(paths: ProjectPaths) -> None:
    """The default head: no epochs, its logits are the verifier's scores, and it beats chance by far on
    held-out images; fitted without TensorFlow."""
    result = train(paths, model=MODEL.model_copy(update={"head": "ridge"}))
    embeddings, labels = held_out(paths, result)
    logits = result.head.logits(embeddings)
    np.testing.assert_allclose(logits, result.verifier.scores(embeddings), rtol=1e-4, atol=1e-4)
    assert result.state.completed_epochs == 1 and result.state.history["val_accuracy"][0] > CHANCE + 0.3
    assert float(np.mean(np.argmax(logits, axis=1) == labels)) > CHANCE + 0.3


def test_the_embeddings_hold_the_clean_view_first_and_the_head_trains_on_every_view(
    default_training: tuple[ProjectPaths, TrainResult],
) -> None:
    from tasks.model.classifier import build_base
    from tasks.training.embed import feature_embedder

    paths, result = default_training
    data = load_embedded_training(paths, read_manifest(paths.manifest_file))
    assert data.train_views.shape[0] == 1 + TRAIN.augmented_views
    images = load_training_data(read_manifest(paths.manifest_file), paths.root)
    embedder = feature_embedder(
        build_base(IMAGE_SIZE, MODEL.weights, paths.root, TRAIN.seed), IMAGE_SIZE, EmbeddingSpec.of(MODEL)
    )
    clean = embedder.predict(plain_batches(images.train, None, 16), verbose=0)
    np.testing.assert_allclose(data.train_views[0], clean, rtol=1e-3, atol=1e-4)
    assert not np.allclose(data.train_views[1], clean, rtol=1e-3, atol=1e-4)
    assert result.train_images_per_second > 0


def test_cached_mode_learns_and_is_reproducible(
    default_training: tuple[ProjectPaths, TrainResult], tmp_path: Path
) -> None:
    trained_paths, first = default_training
    history = first.state.history
    assert history["loss"][-1] < history["loss"][0]
    assert max(history["val_accuracy"]) > CHANCE + 0.2
    shutil.copytree(trained_paths.root / "data", tmp_path / "data")
    second = train(ProjectPaths.from_root(tmp_path))
    assert second.state.history == history  # reproducible on CPU, to the last digit
    np.testing.assert_array_equal(second.head.output_kernel, first.head.output_kernel)


def test_the_packaged_classifier_equals_the_head_trained_on_the_embeddings(
    default_training: tuple[ProjectPaths, TrainResult],
) -> None:
    """The classifier register packages (base + the head's arrays) gives the validation accuracy the head
    reached on the embeddings at its best epoch, and well above chance on test images."""
    paths, result = default_training
    images = load_training_data(read_manifest(paths.manifest_file), paths.root)
    classifier = packaged(result, paths)
    validation = classifier.predict(plain_batches(images.val, None, 16), verbose=0)
    best = result.state.history["val_accuracy"][result.state.best_epoch]
    assert float(np.mean(np.argmax(validation, axis=1) == images.val.labels)) == pytest.approx(best)
    assert np.allclose(validation.sum(axis=1), 1.0, atol=1e-5)
    embeddings, labels = held_out(paths, result)
    assert float(np.mean(np.argmax(result.head.logits(embeddings), axis=1) == labels)) > CHANCE + 0.2


def test_online_mode_learns(paths: ProjectPaths) -> None:
    result = train(paths, TRAIN.model_copy(update={"mode": "online", "epochs": 5}))
    history = result.state.history
    assert len(history["loss"]) == 5
    assert history["loss"][-1] < history["loss"][0]
    assert max(history["val_accuracy"]) > CHANCE
    assert result.head.class_count == WRITERS and result.head.hidden_units == MODEL.dense_units


def test_cached_mode_learns_under_bfloat16_mixed_precision(paths: ProjectPaths) -> None:
    """`train.mixed_precision: on` on a CPU: the head trains in bfloat16; its arrays are float32."""
    from tasks.training.device import apply_policy, choose_policy

    class HeadPrecision(keras.callbacks.Callback):
        """Records the compute dtype of the hidden layer of the head being trained."""

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.seen.append(self.model.get_layer("head_dense").compute_dtype)

    params = TRAIN.model_copy(update={"mixed_precision": "on"})
    try:
        apply_policy(choose_policy(0, params.mixed_precision, params.distribute))
        precision = HeadPrecision()
        result = train(paths, params, callbacks=(precision,))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert precision.seen == ["bfloat16"]  # the policy survives the cleared session
    history = result.state.history
    assert history["loss"][-1] < history["loss"][0]
    assert max(history["val_accuracy"]) > CHANCE + 0.2
    assert result.head.hidden_kernel.dtype == np.float32
    embeddings, _labels = held_out(paths, result)
    assert result.head.logits(embeddings).dtype == np.float32


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
    import tasks.training.checkpoints

    def disk_full(arrays: dict, path: Path) -> None:
        raise OSError(f"{path}: no space left on device")

    monkeypatch.setattr(tasks.training.checkpoints, "save_arrays", disk_full)
    with pytest.raises(OSError, match="no space left"):
        train(paths, TRAIN.model_copy(update={"epochs": 3}))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"not a zip at all"])
def test_an_unreadable_checkpoint_is_ignored_not_fatal(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "last.npz").write_bytes(content)
    assert read_resumable_state(tmp_path, "any fingerprint") is None
